/**
 * A GPTQ job done by a worker through the work folder (gptq-jobs.ts) returns what runGptqJob returns
 * in the coordinator's own thread, bit for bit, for an integer scheme and NVFP4 (row global scales);
 * a failed factorisation comes back as a NumericalError, so the coordinator falls back as it would.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { gptqFiles, gptqJob, remoteGptqPool } from "../../src/pipeline/gptq-jobs.js";
import type { LayerSteps } from "../../src/pipeline/layer-steps.js";
import { type GptqJob, runGptqJob } from "../../src/quantization/gptq-pool.js";
import { type Scheme, resolveScheme } from "../../src/quantization/scheme.js";
import { NumericalError } from "../../src/errors.js";
import { golden, tempDir } from "../helpers.js";

const g = golden("gptq-layer1-expert0-gate_proj.safetensors");
const W = g.readF32("weight").data;
const H = g.readF32("H").data;
const NAME = "model.layers.1.self_attn.q_proj";

/** A worker's view of the run: the Linear's scheme, the scale dtype and GPTQ's block size (all a GPTQ job takes from its run). */
const stepsOf = (scheme: Scheme): LayerSteps =>
  ({ run: { schemeOf: () => scheme, scaleDType: "BF16" }, gptq: { blockSize: 128, dampening: 0.01 } }) as unknown as LayerSteps;

for (const [what, scheme, globalScale] of [
  ["W4A16 (groups of 32)", resolveScheme("W4A16", { groupSize: 32 }), undefined],
  ["NVFP4 (row global scales)", resolveScheme("NVFP4"), new Float32Array(64).fill(448 * 6)],
] as const)
  test(`a GPTQ job done by a worker gives the coordinator's own result, bit for bit: ${what}`, async () => {
    const dir = tempDir("moecal-gptq-jobs-");
    const job = (hessian: Float32Array): GptqJob => ({
      weight: W.slice(),
      out: 64,
      prep: { hessian, inF: 128, dampening: 0.01, blockSize: 128 },
      args: scheme.weights,
      dtype: "BF16",
      name: NAME,
      ...(globalScale ? { globalScale: globalScale.slice() } : {}),
    });
    const local = await runGptqJob(job(H.slice()));
    const ran: string[] = [];
    const pool = remoteGptqPool(dir, 1, async (n, linear) => {
      ran.push(`${n}:${linear}`);
      await gptqJob(stepsOf(scheme), dir, 1, { n, linear, tag: "test" });
    });
    const remote = await (await pool.submit(() => job(H.slice()))).result;
    assert.deepEqual(remote.weight.codes, local.weight.codes);
    assert.deepEqual(remote.weight.params, local.weight.params);
    assert.deepEqual(remote.dequantized, local.dequantized);
    assert.deepEqual(remote.rowLoss, local.rowLoss);
    assert.equal(remote.loss, local.loss);
    const bad = new Float32Array(128 * 128).map((_, i) => (i % 129 === 0 ? -1 : 0));
    const failed = await pool.submit(() => job(bad));
    await assert.rejects(failed.result, (e: unknown) => e instanceof NumericalError && /not positive definite/.test(e.message));
    assert.deepEqual(ran, [`0:${NAME}`, `1:${NAME}`]);
    assert.ok(fs.existsSync(gptqFiles(dir, 1, 1).result), "the failure is a result the coordinator reads");
    fs.rmSync(dir, { recursive: true, force: true });
  });

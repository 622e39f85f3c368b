import { test } from "node:test";
import assert from "node:assert/strict";
import { GptqPool, runGptqJob } from "../../src/quantization/gptq-pool.js";
import { prepareGptq } from "../../src/quantization/gptq.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { NumericalError } from "../../src/errors.js";
import { golden } from "../helpers.js";

const g = golden("gptq-layer1-expert0-gate_proj.safetensors");
const W = g.readF32("weight").data;
const H = g.readF32("H").data;
const args = resolveScheme("W4A16", { groupSize: 32 }).weights;

test("GPTQ on worker threads gives the main thread's codes and scales; failures come back as NumericalError", async () => {
  const job = (prep: Parameters<typeof runGptqJob>[0]["prep"]) => ({ weight: W.slice(), out: 64, prep, args, dtype: "BF16" as const, name: "gate_proj", blockSize: 128 });
  const local = await runGptqJob({ ...job({ hessian: H.slice(), inF: 128, dampening: 0.01 }), id: 0 });
  const pool = new GptqPool(2);
  try {
    const shared = await prepareGptq(H, 128, args.actorder, "gate_proj");
    const a = await pool.submit(() => job(shared));
    const b = await pool.submit(() => job({ hessian: H.slice(), inF: 128, dampening: 0.01 }));
    const bad = await pool.submit(() => job({ hessian: new Float32Array(128 * 128).map((_, i) => (i % 129 === 0 ? -1 : 0)), inF: 128, dampening: 0.01 }));
    for (const r of [await a.result, await b.result]) {
      assert.deepEqual(r.weight.params.scale, local.weight.params.scale);
      let same = 0;
      r.weight.codes.forEach((c, i) => (same += c === local.weight.codes[i] ? 1 : 0));
      assert.ok(same / W.length >= 0.995, `${same} of ${W.length} codes equal`);
    }
    await assert.rejects(bad.result, (e: unknown) => e instanceof NumericalError && /not positive definite/.test(e.message));
  } finally {
    await pool.close();
  }
});

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { closeSharedGptqPool, gptqPool, runGptqJob, sharedGptqPool } from "../../src/quantization/gptq-pool.js";
import { prepareGptq } from "../../src/quantization/gptq.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { dequantize } from "../../src/quantization/params.js";
import { NumericalError } from "../../src/errors.js";
import { golden, tempDir } from "../helpers.js";

const g = golden("gptq-layer1-expert0-gate_proj.safetensors");
const W = g.readF32("weight").data;
const H = g.readF32("H").data;
const args = resolveScheme("W4A16", { groupSize: 32 }).weights;

test("GPTQ on worker threads gives the main thread's codes and scales; failures come back as NumericalError", async () => {
  const job = (prep: Parameters<typeof runGptqJob>[0]["prep"]) => ({
    weight: W.slice(),
    out: 64,
    prep,
    args,
    dtype: "BF16" as const,
    name: "gate_proj",
  });
  const local = await runGptqJob(job({ hessian: H.slice(), inF: 128, dampening: 0.01, blockSize: 128 }));
  const pool = gptqPool(2);
  try {
    const shared = await prepareGptq(H, 128, args.actorder, "gate_proj");
    const a = await pool.submit(() => job(shared));
    const b = await pool.submit(() => job({ hessian: H.slice(), inF: 128, dampening: 0.01, blockSize: 128 }));
    const bad = await pool.submit(() =>
      job({ hessian: new Float32Array(128 * 128).map((_, i) => (i % 129 === 0 ? -1 : 0)), inF: 128, dampening: 0.01, blockSize: 128 }),
    );
    for (const r of [await a.result, await b.result]) {
      assert.deepEqual(r.weight.params.scale, local.weight.params.scale);
      let same = 0;
      for (const [i, c] of r.weight.codes.entries()) same += c === local.weight.codes[i] ? 1 : 0;
      assert.ok(same / W.length >= 0.995, `${same} of ${W.length} codes equal`);
    }
    await assert.rejects(bad.result, (e: unknown) => e instanceof NumericalError && /not positive definite/.test(e.message));
  } finally {
    await pool.close();
  }
});

test("a job's weight in shared memory is quantized in place on a worker, not moved: the caller's array holds the dequantized weight", async () => {
  const local = await runGptqJob({
    weight: W.slice(),
    out: 64,
    prep: { hessian: H.slice(), inF: 128, dampening: 0.01, blockSize: 128 },
    args,
    dtype: "BF16",
    name: "gate_proj",
  });
  const weight = new Float32Array(new SharedArrayBuffer(4 * W.length));
  weight.set(W);
  const hessian = H.slice();
  const pool = gptqPool(1);
  try {
    const job = await pool.submit(() => ({
      weight,
      out: 64,
      prep: { hessian, inF: 128, dampening: 0.01, blockSize: 128 },
      args,
      dtype: "BF16" as const,
      name: "gate_proj",
    }));
    const r = await job.result;
    assert.equal(hessian.length, 0, "the Hessian (not shared) was moved to the worker");
    assert.equal(weight.length, W.length, "the shared weight was not moved");
    assert.deepEqual(r.dequantized, weight, "the result is the caller's shared array");
    assert.deepEqual(weight, dequantize(r.weight), "the caller's array holds dequantize(codes)");
    let near = 0;
    for (const [i, v] of weight.entries()) near += Math.abs(v - (local.dequantized[i] as number)) <= 1e-6 ? 1 : 0;
    assert.ok(near / W.length >= 0.995, `${near} of ${W.length} values as the main thread's`);
    assert.ok(
      weight.some((v, i) => v !== W[i]),
      "the weight was left as it was",
    );
  } finally {
    await pool.close();
  }
});

test("the shared pool is kept between calls, and its idle workers do not keep the process alive", async () => {
  const a = await sharedGptqPool(2);
  assert.equal(await sharedGptqPool(2), a, "same size: the same pool");
  const b = await sharedGptqPool(1);
  assert.notEqual(b, a, "another size replaces it");
  assert.equal((await sharedGptqPool(0)).size, 0);
  await closeSharedGptqPool();
  // a child quantizes on the shared pool and never closes it: it must still exit by itself
  const poolModule = new URL("../../src/quantization/gptq-pool.js", import.meta.url).href;
  const script = `
    const { sharedGptqPool } = await import(${JSON.stringify(poolModule)});
    const pool = await sharedGptqPool(2);
    const n = 64, out = 32;
    const hessian = new Float32Array(n * n).map((_, i) => (i % (n + 1) === 0 ? 2 : 0));
    const weight = new Float32Array(out * n).map((_, i) => Math.sin(i));
    const args = { numBits: 4, type: "int", symmetric: true, strategy: "group", groupSize: 32, dynamic: false, actorder: null };
    const job = await pool.submit(() => ({ weight, out, prep: { hessian, inF: n, dampening: 0.01, blockSize: 128 }, args, dtype: "F32", name: "x" }));
    const r = await job.result;
    console.log("codes", r.weight.codes.length);
  `;
  const dir = tempDir("moecal-pool-");
  const file = path.join(dir, "child.mjs");
  fs.writeFileSync(file, script);
  const child = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 60_000 });
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(child.signal, null, `the child was killed (${child.signal}): it did not exit by itself; stderr: ${child.stderr}`);
  assert.equal(child.status, 0, child.stderr);
  assert.match(child.stdout, /codes 2048/);
});

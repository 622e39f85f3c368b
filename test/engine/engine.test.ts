import { test } from "node:test";
import assert from "node:assert/strict";
import { OrtEngine, ReferenceEngine } from "../../src/engine/index.js";
import { randn } from "../rand.js";
import { assertClose } from "../helpers.js";

const ort = new OrtEngine();
const ref = new ReferenceEngine();

test("onnxruntime linear matches the TypeScript reference on several shapes (one session serves all)", async () => {
  for (const [m, k, n] of [
    [1, 1, 1],
    [7, 13, 5],
    [64, 128, 33],
    [3, 257, 129],
  ] as const) {
    const x = randn([m, k], m * 31 + k);
    const w = randn([n, k], n * 17 + k);
    assertClose(`linear ${m}x${k}x${n}`, await ort.linear(x, w), await ref.linear(x, w), 1e-6);
  }
});

test("onnxruntime batched matmul (rank 3) and gram match the reference", async () => {
  const a = randn([3, 9, 17], 1);
  const b = randn([3, 17, 11], 2);
  const y = await ort.matmul(a, b);
  assert.deepEqual(y.shape, [3, 9, 11]);
  assertClose("matmul", y, await ref.matmul(a, b), 1e-6);
  const x = randn([50, 23], 3);
  assertClose("gram", await ort.gram(x), await ref.gram(x), 1e-6);
  const a2 = randn([6, 4], 4);
  const b2 = randn([4, 5], 5);
  assertClose("matmul rank 2", await ort.matmul(a2, b2), await ref.matmul(a2, b2), 1e-6);
});

test("subtractProduct (one Gemm with alpha -1, beta 1) matches the reference, and linear writes into a given buffer", async () => {
  const a = randn([37, 19], 6);
  const b = randn([19, 23], 7);
  const c1 = randn([37, 23], 8);
  const c2 = c1.clone();
  await ort.subtractProduct(c1, a, b);
  await ref.subtractProduct(c2, a, b);
  assertClose("subtractProduct", c1, c2, 1e-6);
  // tall operands go through in row chunks into the caller's buffer
  const x = randn([2500, 16], 9);
  const w = randn([8, 16], 10);
  const buf = new Float32Array(2500 * 8);
  const y = await ort.linear(x, w, buf);
  assert.equal(y.data, buf);
  assertClose("linear (row-chunked, into buffer)", y, await ref.linear(x, w), 1e-6);
  await assert.rejects(ort.linear(x, w, new Float32Array(3)), /output buffer has 3 floats/);
});

test("empty batches give empty or zero results", async () => {
  const y = await ort.linear(randn([0, 8], 1), randn([4, 8], 2));
  assert.deepEqual(y.shape, [0, 4]);
  const g = await ort.gram(randn([0, 5], 1));
  assert.deepEqual([...g.data], new Array(25).fill(0));
});

test("shape mismatches are usage errors", async () => {
  await assert.rejects(ort.linear(randn([2, 3], 1), randn([4, 5], 2)), /do not fit/);
  await assert.rejects(ort.matmul(randn([2, 3], 1), randn([4, 5], 2)), /do not fit/);
});

test("onnxruntime swiglu matches the TypeScript reference, also far into both tails and into a given buffer", async () => {
  const g = randn([4, 1000], 11, 4);
  g.data.set([-100, -30, -17, -5, 0, 5, 17, 30, 100, -0.0], 0);
  const u = randn([4, 1000], 12);
  const buf = new Float32Array(4000);
  const y = await ort.swiglu(g, u, buf);
  assert.equal(y.data, buf);
  assert.deepEqual(y.shape, [4, 1000]);
  const r = await ref.swiglu(g, u);
  assertClose("swiglu", y, r, 1e-6);
  // element by element, tails included (where silu is tiny): within a few float32 roundings
  let worst = 0;
  let at = 0;
  for (let i = 0; i < 4000; i++) {
    const e = Math.abs((y.data[i] as number) - (r.data[i] as number)) / Math.max(Math.abs(r.data[i] as number), 1e-30);
    if (e > worst) [worst, at] = [e, i];
  }
  assert.ok(worst <= 1e-6, `swiglu: relative error ${worst} at [${at}] (gate ${g.data[at]}): ${y.data[at]} vs ${r.data[at]}`);
  await assert.rejects(ort.swiglu(g, randn([3], 1)), /swiglu: gate \[4, 1000\] and up \[3\] differ/);
});

test("swigluExpert (gate, up, SwiGLU and the Gram product in one session) matches the reference, also in row chunks", async () => {
  for (const m of [5, 1100]) {
    const x = randn([m, 24], 21 + m);
    const wg = randn([12, 24], 22);
    const wu = randn([12, 24], 23);
    const act = new Float32Array(m * 12);
    const gram = new Float32Array(144).fill(7); // overwritten, not added to
    const a = await ort.swigluExpert(x, wg, wu, { act, gram });
    assert.equal(a.data, act);
    const want = { act: new Float32Array(m * 12), gram: new Float32Array(144) };
    const refA = await ref.swigluExpert(x, wg, wu, want);
    assertClose(`swigluExpert act, ${m} rows`, a, refA, 1e-5);
    assertClose(`swigluExpert gram, ${m} rows`, gram, want.gram, 1e-5);
    // with the down product: the whole MLP
    const wd = randn([7, 12], 24);
    const down = { weight: wd, out: new Float32Array(m * 7) };
    const wantDown = { weight: wd, out: new Float32Array(m * 7) };
    await ort.swigluExpert(x, wg, wu, { act: new Float32Array(m * 12), down });
    await ref.swigluExpert(x, wg, wu, { act: new Float32Array(m * 12), down: wantDown });
    assertClose(`swigluExpert down, ${m} rows`, down.out, wantDown.out, 1e-5);
    // activations only: the same activations
    assertClose(`swigluExpert act alone, ${m} rows`, await ort.swigluExpert(x, wg, wu, { act: new Float32Array(m * 12) }), refA, 1e-5);
  }
  const gram = new Float32Array(9).fill(3);
  await ort.swigluExpert(randn([0, 4], 1), randn([3, 4], 2), randn([3, 4], 3), { act: new Float32Array(0), gram });
  assert.deepEqual([...gram], new Array(9).fill(0));
  await assert.rejects(ort.swigluExpert(randn([2, 4], 1), randn([3, 4], 2), randn([2, 4], 3), { act: new Float32Array(6) }), /differ/);
  // gram into a given buffer
  const x = randn([40, 9], 4);
  const buf = new Float32Array(81);
  const g = await ort.gram(x, buf);
  assert.equal(g.data, buf);
  assertClose("gram into a buffer", g, await ref.gram(x), 1e-6);
});

test("swigluExpert with addGram adds each call's Gram product to the sum inside the engine (also in row chunks), as the reference", async () => {
  const wg = randn([12, 24], 32);
  const wu = randn([12, 24], 33);
  const sum = new Float32Array(144).fill(0.5);
  const want = new Float32Array(144).fill(0.5);
  for (const m of [5, 1100, 0, 7]) {
    const x = randn([m, 24], 40 + m);
    await ort.swigluExpert(x, wg, wu, { act: new Float32Array(m * 12), gram: sum, addGram: true });
    await ref.swigluExpert(x, wg, wu, { act: new Float32Array(m * 12), gram: want, addGram: true });
    assertClose(`running Gram sum after ${m} rows`, sum, want, 1e-5);
  }
  // the sum holds 0.5 + every call's product: not the last call's alone
  const last = new Float32Array(144);
  await ref.swigluExpert(randn([7, 24], 47), wg, wu, { act: new Float32Array(84), gram: last });
  assert.ok(Math.abs((sum[0] as number) - (last[0] as number)) > 1, "the earlier calls' products are in the sum");
});

test("onnxruntime rmsNorm (float32, as PyTorch) matches the reference (float64 sums) row by row, keeps the shape, writes into a given buffer", async () => {
  for (const [shape, eps] of [
    [[2, 3, 64], 1e-6],
    [[300, 1024], 1e-5],
    [[5, 7], 0.5],
  ] as const) {
    const n = shape[shape.length - 1] as number;
    const x = randn([...shape], n, 3);
    x.data.fill(0, 0, n); // an all-zero row: zeros, not NaN
    const w = randn([n], n + 1);
    const r = await ref.rmsNorm(x, w, eps);
    const buf = new Float32Array(x.size);
    const y = await ort.rmsNorm(x, w, eps, buf);
    assert.equal(y.data, buf);
    assert.deepEqual(y.shape, [...shape]);
    assert.ok(y.data.subarray(0, n).every((v) => v === 0));
    let worst = 0;
    for (let i = 0; i < x.size; i++) {
      const e = Math.abs((y.data[i] as number) - (r.data[i] as number)) / Math.max(Math.abs(r.data[i] as number), 1e-30);
      worst = Math.max(worst, e);
    }
    // float32 sums of squares against float64 ones: within a few float32 roundings
    assert.ok(worst <= 3e-6, `rmsNorm [${shape.join(", ")}]: relative error ${worst}`);
  }
  const empty = await ort.rmsNorm(randn([0, 8], 1), randn([8], 2), 1e-6);
  assert.deepEqual(empty.shape, [0, 8]);
  await assert.rejects(ort.rmsNorm(randn([2, 3], 1), randn([4], 2), 1e-6), /rmsNorm: last dimension/);
});

test("onnxruntime sigmoidGate (x * sigmoid(g)) matches the reference, also far into both tails, keeps x's shape, writes into a given buffer", async () => {
  const x = randn([3, 4, 500], 21, 2);
  const g = randn([12, 500], 22, 4);
  g.data.set([-100, -30, -17, -5, 0, 5, 17, 30, 100, -0.0], 0);
  const buf = new Float32Array(6000);
  const y = await ort.sigmoidGate(x, g, buf);
  assert.equal(y.data, buf);
  assert.deepEqual(y.shape, [3, 4, 500]);
  const r = await ref.sigmoidGate(x, g);
  let worst = 0;
  for (let i = 0; i < 6000; i++) {
    const e = Math.abs((y.data[i] as number) - (r.data[i] as number)) / Math.max(Math.abs(r.data[i] as number), 1e-30);
    worst = Math.max(worst, e);
  }
  assert.ok(worst <= 1e-6, `sigmoidGate: relative error ${worst}`);
  await assert.rejects(ort.sigmoidGate(randn([2, 3], 1), randn([5], 2)), /sigmoidGate: x \[2, 3\] and gate \[5\] differ in size/);
});

test("onnxruntime attention (one head: q k^T, scale, additive mask, softmax, times v) matches the reference, causal and windowed", async () => {
  const { causalMask } = await import("../../src/nn/attention.js");
  const S = 37;
  const q = randn([S, 16], 31, 2);
  const k = randn([S, 16], 32, 2);
  const v = randn([S, 24], 33);
  for (const window of [null, 5]) {
    const mask = causalMask(S, window);
    const buf = new Float32Array(S * 24);
    const y = await ort.attention(q, k, v, mask, 0.3, buf);
    assert.equal(y.data, buf);
    assert.deepEqual(y.shape, [S, 24]);
    assertClose(`attention (window ${window})`, y, await ref.attention(q, k, v, mask, 0.3), 1e-6);
    // the first query sees only the first key: its output is that key's value
    assertClose("first row", y.data.subarray(0, 24), v.data.subarray(0, 24), 1e-6);
  }
  await assert.rejects(ort.attention(q, k, randn([S - 1, 24], 1), causalMask(S, null), 1), /attention: .* do not fit/);
  // a long sequence goes through in row chunks (2^22 scores a run): 2,100 rows in two
  const L = 2100;
  const [ql, kl, vl] = [randn([L, 8], 34), randn([L, 8], 35), randn([L, 8], 36)];
  const long = causalMask(L, 700);
  assertClose("attention in row chunks", await ort.attention(ql, kl, vl, long, 0.5), await ref.attention(ql, kl, vl, long, 0.5), 1e-6);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../src/engine/tensor.js";
import { rmsNorm, sigmoid, silu, softmax, swiglu, topkIndices } from "../../src/engine/ops.js";
import { applyRopeInPlace } from "../../src/nn/rope.js";

const t = (v: number[], shape = [v.length]): Tensor => new Tensor(Float32Array.from(v), shape);
const close = (a: ArrayLike<number>, b: number[], eps = 1e-6): void => {
  assert.equal(a.length, b.length);
  for (const [i, x] of b.entries()) assert.ok(Math.abs((a[i] as number) - x) <= eps * Math.max(1, Math.abs(x)), `[${i}] ${a[i]} vs ${x}`);
};

test("element-wise ops: sigmoid, silu, swiglu, softmax", () => {
  close(sigmoid(t([0, 2, -2])).data, [0.5, 1 / (1 + Math.exp(-2)), 1 / (1 + Math.exp(2))]);
  close(silu(t([0, 1, -1])).data, [0, 1 / (1 + Math.exp(-1)), -1 / (1 + Math.exp(1))]);
  close(swiglu(t([1, -1]), t([2, 3])).data, [2 / (1 + Math.exp(-1)), -3 / (1 + Math.exp(1))]);
  const e = [Math.exp(1), Math.exp(2), Math.exp(3)];
  const z = e.reduce((a, b) => a + b, 0);
  close(
    softmax(t([1, 2, 3, 1, 2, 3], [2, 3])).data,
    [...e, ...e].map((x) => x / z),
  );
});

test("top-k: descending, ties to the lower index", () => {
  assert.deepEqual([...topkIndices(t([0.1, 0.9, 0.5, 0.9], [1, 4]), 3)], [1, 3, 2]);
  assert.throws(() => topkIndices(t([1, 2], [1, 2]), 3), /exceeds/);
});

test("RMSNorm and RoPE against hand-computed values", () => {
  const x = t([3, 4], [1, 2]);
  const inv = 1 / Math.sqrt(12.5 + 1e-5);
  close(rmsNorm(x, t([1, 2]), 1e-5).data, [3 * inv, 8 * inv]);
  // D = 2, position 1, theta 10000: inv_freq = 1, rotate by 1 radian
  const r = Float32Array.from([1, 0, 1, 0]); // [B=1, S=2, heads=1, D=2]
  applyRopeInPlace(r, 1, 2, 1, 2, 10000);
  close(r, [1, 0, Math.cos(1), Math.sin(1)]);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../src/engine/tensor.js";
import { SwiGluMLP } from "../../src/nn/mlp.js";
import { servedExperts } from "../../src/nn/moe.js";

/** `n` experts with fixed pseudo-random weights. */
function experts(n: number, H: number, I: number): SwiGluMLP[] {
  let s = 7;
  const rnd = (): number => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648 - 0.5;
  };
  return Array.from({ length: n }, () => {
    const e = new SwiGluMLP(H, I);
    for (const [, p] of e.namedParameters())
      p.value = new Tensor(Float32Array.from({ length: (p.shape[0] as number) * (p.shape[1] as number) }, rnd), p.shape);
    return e;
  });
}

test("served experts: the scratch-memory path adds what the module calls add, and a hook keeps its own input", async () => {
  const [T, H, I, E, K] = [9, 8, 6, 4, 2];
  const list = experts(E, H, I);
  const flat = new Tensor(
    Float32Array.from({ length: T * H }, (_, i) => Math.sin(i * 0.7)),
    [T, H],
  );
  const selected = Int32Array.from({ length: T * K }, (_, i) => (i * 3 + (i >> 1)) % E);
  for (let t = 0; t < T; t++) if (selected[t * K] === selected[t * K + 1]) selected[t * K + 1] = ((selected[t * K] as number) + 1) % E;
  const topScores = new Tensor(
    Float32Array.from({ length: T * K }, (_, i) => 0.25 + (i % 5) * 0.1),
    [T, K],
  );
  const input = { flat, topScores, selectedExperts: selected };
  const plain = Tensor.zeros([T, H]);
  await servedExperts(input, list, 0, plain);
  // a hook on every expert: each is called as a module, and each hook keeps its input
  const kept: Tensor[] = [];
  const removers = list.map((e) => e.registerForwardHook((_m, x) => void kept.push(x)));
  const hooked = Tensor.zeros([T, H]);
  await servedExperts(input, list, 0, hooked);
  for (const r of removers) r();
  assert.deepEqual(hooked.data, plain.data);
  assert.ok(plain.data.some((v) => v !== 0));
  // every kept input still holds its expert's routed rows, after later experts ran
  assert.equal(kept.length, E);
  for (const [e, x] of kept.entries()) {
    const tokens = [...Array(T).keys()].filter((t) => selected[t * K] === e || selected[t * K + 1] === e);
    const order = [0, 1].flatMap((k) => tokens.filter((t) => selected[t * K + k] === e));
    assert.deepEqual(
      [...x.data],
      order.flatMap((t) => [...flat.data.subarray(t * H, (t + 1) * H)]),
    );
  }
});

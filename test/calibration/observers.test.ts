import { test } from "node:test";
import assert from "node:assert/strict";
import { type Engine, ReferenceEngine, getEngine, setEngine } from "../../src/engine/index.js";
import { Tensor } from "../../src/engine/tensor.js";
import { HessianStats, attachHessianObservers } from "../../src/calibration/observers.js";
import { GramAccumulator } from "../../src/calibration/gram.js";
import { Linear } from "../../src/nn/layers.js";
import { Module } from "../../src/nn/module.js";
import { randn } from "../rand.js";
import { assertClose } from "../helpers.js";

/** q, k, v read the same tensor; o reads another; then q alone on a third. */
class ThreeReaders extends Module<Tensor, Tensor> {
  readonly className = "ThreeReaders";
  constructor() {
    super();
    for (const n of ["q", "k", "v", "o"]) this.addModule(n, new Linear(6, 6));
  }
  async forward(x: Tensor): Promise<Tensor> {
    const [q, k, v, o] = ["q", "k", "v", "o"].map((n) => this.child<Linear>(n));
    await (q as Linear).call(x);
    await (k as Linear).call(x);
    await (o as Linear).call(await (v as Linear).call(x));
    // the same tensor object again after another input: multiplied again, not taken from before
    return (k as Linear).call(x);
  }
}

test("Linears reading the same tensor share one Gram product; each Hessian is still its own rows' 2 x^T x", async () => {
  const previous = getEngine();
  const ref = new ReferenceEngine();
  let grams = 0;
  const counting: Engine = Object.assign(Object.create(ref) as Engine, {
    gram: (x: Tensor, out?: Float32Array) => {
      grams++;
      return ref.gram(x, out);
    },
  });
  setEngine(counting);
  try {
    const m = new ThreeReaders();
    for (const [, p] of m.namedParameters()) p.value = randn(p.shape, 5);
    const obs = attachHessianObservers(m, () => true);
    const x = randn([4, 6], 1);
    await m.call(x);
    // q/k/v share one product; o's input is another; k's second call follows o, so it multiplies again
    assert.equal(grams, 3);
    const xx = (await ref.gram(x)).data.map((v) => 2 * v);
    assertClose("q", obs.stats.get("q")?.H ?? [], xx, 1e-6);
    assertClose("v", obs.stats.get("v")?.H ?? [], xx, 1e-6);
    assertClose(
      "k (two calls)",
      obs.stats.get("k")?.H ?? [],
      xx.map((v) => 2 * v),
      1e-6,
    );
    assert.equal(obs.stats.get("k")?.rows, 8);
    obs.remove();
  } finally {
    setEngine(previous);
  }
});

test("own rows summed shard by shard: each shard's sum added whole, in shard order (not the running sum); unsharded Linears keep the running sum", async () => {
  const m = new ThreeReaders();
  for (const [, p] of m.namedParameters()) p.value = randn(p.shape, 5);
  const a = m.child<Linear>("q");
  const b = m.child<Linear>("o");
  const obs = attachHessianObservers(m, () => true);
  // Gram products 1, then 2^-24 twice: shard by shard 1 + (2^-24 + 2^-24) = 1 + 2^-23; running (1 + 2^-24) + 2^-24 = 1
  const rows = [1, 2 ** -12].map((v) => new Tensor(new Float32Array(6).fill(v), [1, 6]));
  await a.call(rows[0] as Tensor);
  await b.call(rows[0] as Tensor);
  obs.endShard((n) => n === "q");
  for (let k = 0; k < 2; k++) {
    await a.call(rows[1] as Tensor);
    await b.call(rows[1] as Tensor);
  }
  obs.endShard((n) => n === "q");
  // every element of the 6 x 6 Gram sums is the same
  assert.deepEqual(new Set(obs.stats.get("q")?.H ?? []), new Set([2 * (1 + 2 ** -23)]));
  assert.deepEqual(new Set(obs.stats.get("o")?.H ?? []), new Set([2]));
  assert.equal(obs.stats.get("q")?.rows, 3);
  // a shard left open is ended when the Hessian is read
  await a.call(rows[1] as Tensor);
  assert.equal(obs.stats.get("q")?.rows, 4);
  obs.remove();
});

/** `engine` with its `linear` and `swigluExpert` calls counted. */
function countingProducts(engine: Engine): { counting: Engine; calls: { linear: number; swigluExpert: number } } {
  const calls = { linear: 0, swigluExpert: 0 };
  const counting: Engine = Object.assign(Object.create(engine) as Engine, {
    linear: (...a: Parameters<Engine["linear"]>) => {
      calls.linear++;
      return engine.linear(...a);
    },
    swigluExpert: (...a: Parameters<Engine["swigluExpert"]>) => {
      calls.swigluExpert++;
      return engine.swigluExpert(...a);
    },
  });
  return { counting, calls };
}

test("a watched SwiGLU MLP runs as one engine step: its output, Hessians, row counts and input maxima are those of the Linear-by-Linear calls; another hook keeps the calls", async () => {
  const { SwiGluMLP } = await import("../../src/nn/mlp.js");
  const { attachInputAbsMax } = await import("../../src/calibration/observers.js");
  const mlp = new SwiGluMLP(12, 20);
  let seed = 21;
  for (const [, p] of mlp.namedParameters()) p.value = randn(p.shape, seed++, 0.3);
  const xs = [randn([2, 7, 12], 31), randn([5, 12], 32)];
  // a plain hook (not a fast-path observer) sees each Linear called on its inputs
  const seen: string[] = [];
  const inputs = new Map<string, Tensor[]>();
  const removers = ["gate_proj", "up_proj", "down_proj"].map((n) =>
    mlp.getSubmodule(n).registerForwardPreHook((_m, x) => {
      seen.push(n);
      inputs.set(n, [...(inputs.get(n) ?? []), x as Tensor]);
    }),
  );
  const called: Tensor[] = [];
  for (const x of xs) called.push(await mlp.call(x));
  for (const r of removers) r();
  assert.deepEqual(seen, ["gate_proj", "up_proj", "down_proj", "gate_proj", "up_proj", "down_proj"]);
  const ref = new ReferenceEngine();
  const expected = new Map<string, Float32Array>();
  for (const [n, list] of inputs) {
    const w = n === "down_proj" ? 20 : 12;
    const H = new Float32Array(w * w);
    for (const x of list) {
      const g = await ref.gram(x.reshape([x.size / w, w]));
      for (let i = 0; i < H.length; i++) H[i] = (H[i] as number) + 2 * (g.data[i] as number);
    }
    expected.set(n, H);
  }
  // with only the observers: one swigluExpert step per call, no Linear product
  const previous = getEngine();
  const { counting, calls } = countingProducts(previous);
  const obs = attachHessianObservers(mlp, () => true);
  const absmax = attachInputAbsMax(new Map([["down_proj", mlp.down_proj]]));
  setEngine(counting);
  const out: Tensor[] = [];
  try {
    for (const x of xs) out.push(await mlp.call(x));
  } finally {
    setEngine(previous);
    obs.remove();
    absmax.remove();
  }
  assert.deepEqual(calls, { linear: 0, swigluExpert: 2 });
  for (const [i, y] of out.entries()) {
    assert.deepEqual(y.shape, called[i]?.shape);
    assertClose(`output ${i}`, y, called[i] as Tensor, 1e-5);
  }
  for (const [n, H] of expected) {
    assert.equal(obs.stats.get(n)?.rows, 19, `${n}: rows`);
    assertClose(`${n}: Hessian`, obs.stats.get(n)?.H as Float32Array, H, 1e-5);
  }
  let m = 0;
  for (const x of inputs.get("down_proj") ?? []) for (const v of x.data) m = Math.max(m, Math.abs(v));
  assert.equal(absmax.stats.get("down_proj")?.rows, 19);
  assert.ok(Math.abs((absmax.stats.get("down_proj")?.absmax ?? 0) - m) <= 1e-6 * m, "the down_proj inputs' largest magnitude");
});

test("a watched SwiGLU MLP wider than 4,096 keeps its Linear calls (the one step's Gram sum would need a copy as large)", async () => {
  const { SwiGluMLP } = await import("../../src/nn/mlp.js");
  const mlp = new SwiGluMLP(4, 4097);
  let seed = 51;
  for (const [, p] of mlp.namedParameters()) p.value = randn(p.shape, seed++, 0.3);
  const previous = getEngine();
  const { counting, calls } = countingProducts(previous);
  const obs = attachHessianObservers(mlp, () => true);
  setEngine(counting);
  try {
    await mlp.call(randn([3, 4], 52));
  } finally {
    setEngine(previous);
    obs.remove();
  }
  assert.deepEqual(calls, { linear: 3, swigluExpert: 0 });
  assert.equal(obs.stats.get("down_proj")?.rows, 3);
});

test("takeH: the values of H, bit for bit, in a new array (own rows, one shared sum, both; made before or not)", async () => {
  const shared = new GramAccumulator(6);
  await shared.add(randn([5, 6], 21));
  const make = async (own: boolean, share: boolean): Promise<HessianStats> => {
    const s = new HessianStats(6);
    if (own) await s.own.add(randn([4, 6], 22));
    if (share) s.shareWith(shared);
    return s;
  };
  for (const [own, share] of [
    [true, false],
    [false, true],
    [true, true],
  ] as const) {
    const taken = (await make(own, share)).takeH();
    const s = await make(own, share);
    const H = s.H;
    assert.deepEqual(taken, H, `own ${own}, shared ${share}`);
    const again = s.takeH();
    assert.notEqual(again, H, "the kept H itself was given away");
    assert.deepEqual(again, H);
  }
  // after another Linear made the shared sum's doubled copy: its values, in an array of its own
  const first = await make(false, true);
  const second = await make(false, true);
  assert.notEqual(second.takeH(), first.H);
  assert.deepEqual(second.takeH(), first.H);
});

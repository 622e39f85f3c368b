import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../src/engine/tensor.js";
import { f32ToBf16 } from "../../src/engine/dtype.js";
import { NumericalError } from "../../src/errors.js";
import { rawToF32 } from "../../src/io/safetensors.js";
import type { TensorSource } from "../../src/io/tensor-source.js";
import { Linear } from "../../src/nn/layers.js";
import { Module } from "../../src/nn/module.js";
import { WeightRecycler, loadParameters, unloadParameters } from "../../src/nn/weights.js";

/** Two layers of one Linear [3, 4] each, and a Linear [2, 4] of another size. */
class Layers extends Module<Tensor, Tensor> {
  readonly className = "Layers";
  constructor() {
    super();
    this.addModule("a", new Linear(4, 3));
    this.addModule("b", new Linear(4, 3));
    this.addModule("c", new Linear(4, 2));
  }
  async forward(x: Tensor): Promise<Tensor> {
    return x;
  }
}

/** bf16 values of each tensor (by name), read as the checkpoint source reads them. */
function source(values: Record<string, number[]>): TensorSource {
  const shapes: Record<string, number[]> = { "a.weight": [3, 4], "b.weight": [3, 4], "c.weight": [2, 4] };
  return {
    dir: "memory",
    names: () => Object.keys(values),
    shapeOf: (n) => shapes[n] as number[],
    readF32: (n, into) => {
      const bits = f32ToBf16(Float32Array.from(values[n] as number[]));
      return rawToF32({ dtype: "BF16", shape: shapes[n] as number[], bytes: new Uint8Array(bits.buffer) }, n, into);
    },
  };
}

test("WeightRecycler: a layer's weights load into the arrays of the one unloaded before (same sizes), with their own values; other sizes and arrays it did not load stay apart", () => {
  const m = new Layers();
  const mapping = {
    sources: new Map(["a.weight", "b.weight", "c.weight"].map((n) => [n, n])),
    missing: [],
    unexpected: [],
    wrongShape: [],
  };
  const vals = (k: number, n: number): number[] => Array.from({ length: n }, (_, i) => (i + k) / 8);
  const src = source({ "a.weight": vals(1, 12), "b.weight": vals(2, 12), "c.weight": vals(3, 8) });
  const r = new WeightRecycler();
  const only = (p: string) => (n: string) => n.startsWith(p);
  loadParameters(m, src, mapping, only("a."), "", r);
  const a = m.getSubmodule("a").param("weight").data;
  unloadParameters(m, only("a."), "", r);
  loadParameters(m, src, mapping, only("b."), "", r);
  const b = m.getSubmodule("b").param("weight").data;
  assert.equal(b, a, "b's values went into a's array");
  assert.deepEqual([...b], vals(2, 12));
  // another size: a new array; b's array is not free while b is loaded
  loadParameters(m, src, mapping, only("c."), "", r);
  assert.deepEqual([...m.getSubmodule("c").param("weight").data], vals(3, 8));
  loadParameters(m, src, mapping, only("a."), "", r);
  assert.notEqual(m.getSubmodule("a").param("weight").data, b);
  // what a load does not take is let go (c's size, after a load of a)
  unloadParameters(m, only("c."), "", r);
  loadParameters(m, src, mapping, only("a."), "", r);
  assert.equal(r.take(8), undefined);
  // a parameter whose value was replaced gives back nothing: the replacement is not the recycler's
  const bLin = m.getSubmodule("b").parameter("weight");
  bLin.value = new Tensor(new Float32Array(12), [3, 4]);
  unloadParameters(m, only("b."), "", r);
  assert.equal(r.take(12), undefined);
});

test("WeightRecycler: non-finite values loaded into a recycled array that held finite ones are found", () => {
  const m = new Layers();
  const mapping = { sources: new Map(["a.weight", "b.weight"].map((n) => [n, n])), missing: [], unexpected: [], wrongShape: [] };
  const bad = Array.from({ length: 12 }, (_, i) => (i === 5 ? Number.POSITIVE_INFINITY : i));
  const src = source({ "a.weight": Array.from({ length: 12 }, (_, i) => i), "b.weight": bad });
  const r = new WeightRecycler();
  loadParameters(m, src, mapping, (n) => n.startsWith("a."), "", r);
  unloadParameters(m, (n) => n.startsWith("a."), "", r);
  assert.throws(
    () => loadParameters(m, src, mapping, (n) => n.startsWith("b."), "", r),
    (e: unknown) => {
      assert.ok(e instanceof NumericalError);
      assert.match((e as Error).message, /tensor "b\.weight": value Infinity at flat index 5/);
      return true;
    },
  );
});

test("rawToF32 writes BF16 and F32 values into a given array of their size, and into a new one otherwise", () => {
  const values = Float32Array.from([1.5, -2, 0.25, 3]);
  const raws = [
    { dtype: "F32" as const, shape: [2, 2], bytes: new Uint8Array(values.buffer.slice(0)) },
    { dtype: "BF16" as const, shape: [2, 2], bytes: new Uint8Array(f32ToBf16(values).buffer) },
  ];
  for (const raw of raws) {
    const into = new Float32Array(4).fill(9);
    const t = rawToF32(raw, raw.dtype, into);
    assert.equal(t.data, into, raw.dtype);
    assert.deepEqual([...t.data], [...values]);
    const other = new Float32Array(3);
    const u = rawToF32(raw, raw.dtype, other);
    assert.notEqual(u.data, other);
    assert.deepEqual([...u.data], [...values]);
  }
});

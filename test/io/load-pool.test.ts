import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { f32ToBf16, fp8e4m3ToF32 } from "../../src/engine/dtype.js";
import type { Tensor } from "../../src/engine/tensor.js";
import { CheckpointFormatError, NumericalError, WeightMappingError } from "../../src/errors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { checkpointSource } from "../../src/io/tensor-source.js";
import { type NamedRaw, writeSafetensors } from "../../src/io/writer.js";
import { Linear } from "../../src/nn/layers.js";
import { Module } from "../../src/nn/module.js";
import { WeightRecycler, loadParameters, loadParametersAsync, unloadParameters } from "../../src/nn/weights.js";
import { tempDir } from "../helpers.js";

const tmp = tempDir("moecal-load-pool-");
/** More values than one 16 MiB piece of bf16 holds (8,388,608): the worker reads it in two pieces. */
const BIG = 3000;

class Two extends Module<Tensor, Tensor> {
  readonly className = "Two";
  /** `a` square of `big`, or [out, in] */
  constructor(big: number | [number, number], small: [number, number]) {
    super();
    const [out, inF] = typeof big === "number" ? [big, big] : big;
    this.addModule("a", new Linear(inF, out));
    this.addModule("b", new Linear(small[1], small[0]));
  }
  async forward(x: Tensor): Promise<Tensor> {
    return x;
  }
}

const values = (n: number, k: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + k) * (1 + (i % 7)));
const bf16 = (name: string, shape: number[], v: Float32Array): NamedRaw => ({
  name,
  dtype: "BF16",
  shape,
  bytes: new Uint8Array(f32ToBf16(v).buffer),
});
const f32 = (name: string, shape: number[], v: Float32Array): NamedRaw => ({ name, dtype: "F32", shape, bytes: new Uint8Array(v.buffer) });

/** A one-file checkpoint of `tensors`, opened. */
function checkpoint(name: string, tensors: NamedRaw[]): Checkpoint {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, "model.safetensors"), tensors);
  return Checkpoint.open(dir);
}

/** The first index where `a` and `b` differ (by bits), or -1 (9 million values: no assertion diff of them). */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  const [x, y] = [new Uint32Array(a.buffer, a.byteOffset, a.length), new Uint32Array(b.buffer, b.byteOffset, b.length)];
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}
const sameValues = (a: Module<Tensor, Tensor>, b: Module<Tensor, Tensor>): void => {
  for (const n of ["a", "b"])
    assert.equal(firstDifference(a.getSubmodule(n).param("weight").data, b.getSubmodule(n).param("weight").data), -1, n);
};

const mappingOf = (pairs: [string, string][]) => ({ sources: new Map(pairs), missing: [], unexpected: [], wrongShape: [] });
const same = mappingOf([
  ["a.weight", "a.weight"],
  ["b.weight", "b.weight"],
]);

test("loadParametersAsync on worker threads: the values loadParameters gives, bf16 in pieces and f32 read in place; a recycled array is filled and comes back", async () => {
  const ck = checkpoint("plain", [bf16("a.weight", [BIG, BIG], values(BIG * BIG, 1)), f32("b.weight", [3, 4], values(12, 2))]);
  const src = checkpointSource(ck);
  const sync = new Two(BIG, [3, 4]);
  loadParameters(sync, src, same);
  const pooled = new Two(BIG, [3, 4]);
  assert.equal(await loadParametersAsync(pooled, src, same, () => true, "", undefined, 0), 2);
  sameValues(pooled, sync);
  // the recycler's array of a's size goes to a worker, is filled with b2's values and comes back
  const other = checkpoint("other", [bf16("a.weight", [BIG, BIG], values(BIG * BIG, 3)), f32("b.weight", [3, 4], values(12, 4))]);
  const r = new WeightRecycler();
  await loadParametersAsync(pooled, src, same, () => true, "", r, 0);
  unloadParameters(pooled, () => true, "", r);
  await loadParametersAsync(pooled, checkpointSource(other), same, () => true, "", r, 0);
  const expected = new Two(BIG, [3, 4]);
  loadParameters(expected, checkpointSource(other), same);
  sameValues(pooled, expected);
  assert.equal(r.take(BIG * BIG), undefined, "the free array was taken");
  unloadParameters(pooled, () => true, "", r);
  assert.equal(r.take(BIG * BIG)?.length, BIG * BIG, "the array loaded through the worker is the recycler's again");
});

test("loadParametersAsync: a non-finite value, a wrong size and a shard cut short after opening fail as loadParameters fails, naming the tensor or file", async () => {
  const bad = values(12, 5);
  bad[5] = Number.POSITIVE_INFINITY;
  const ck = checkpoint("bad", [bf16("a.weight", [2, 2], values(4, 1)), bf16("b.weight", [3, 4], bad)]);
  const src = checkpointSource(ck);
  const failure = async (load: () => unknown): Promise<Error> => {
    try {
      await load();
    } catch (e) {
      return e as Error;
    }
    assert.fail("the load did not fail");
  };
  const sync = await failure(() => loadParameters(new Two(2, [3, 4]), src, same));
  const pooled = await failure(() => loadParametersAsync(new Two(2, [3, 4]), src, same, () => true, "", undefined, 0));
  assert.ok(pooled instanceof NumericalError);
  assert.equal(pooled.message, sync.message);
  assert.match(pooled.message, /tensor "b\.weight": value Infinity at flat index 5/);
  const wrong = await failure(() => loadParametersAsync(new Two(2, [2, 4]), src, same, () => true, "", undefined, 0));
  assert.ok(wrong instanceof WeightMappingError);
  assert.match(wrong.message, /tensor "b\.weight" has 12 values, "b\.weight" needs 8/);
  // the file shrinks after the checkpoint was opened: the worker's read names it
  const cut = checkpoint("cut", [bf16("a.weight", [2, 2], values(4, 1)), bf16("b.weight", [3, 4], values(12, 2))]);
  const file = path.join(tmp, "cut", "model.safetensors");
  fs.truncateSync(file, fs.statSync(file).size - 8);
  const short = await failure(() => loadParametersAsync(new Two(2, [3, 4]), checkpointSource(cut), same, () => true, "", undefined, 0));
  assert.ok(short instanceof CheckpointFormatError);
  assert.match(short.message, /model\.safetensors: ended after \d+ bytes/);
});

/** A checkpoint of FP8 block weights (codes, scales per 128 x 128 block), presented dequantized as DeepSeek-V3's are. */
function fp8Checkpoint(name: string, weights: { name: string; shape: [number, number]; codes: Uint8Array }[]): Checkpoint {
  const tensors = weights.flatMap(({ name: n, shape, codes }) => [
    { name: n, dtype: "F8_E4M3" as const, shape, bytes: codes },
    f32(n.replace(/\.weight$/, ".weight_scale_inv"), [Math.ceil(shape[0] / 128), Math.ceil(shape[1] / 128)], blockScales(shape)),
  ]);
  const ck = checkpoint(name, tensors);
  ck.presentFp8Blocks({ block: [128, 128], dtype: "BF16" });
  return ck;
}

/** A weight's scales, one per 128 x 128 block, positive. */
const blockScales = ([out, inF]: [number, number]): Float32Array =>
  values(Math.ceil(out / 128) * Math.ceil(inF / 128), 7).map((v) => 0.001 + Math.abs(v) * 0.01);

/** FP8 codes: every byte but the NaN codes (0x7f, 0xff), in a pattern that crosses blocks. */
const fp8Codes = (n: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => {
    const b = ((i * 2654435761) >>> 13) & 0xff;
    return (b & 0x7f) === 0x7f ? b ^ 1 : b;
  });

test("loadParametersAsync of FP8 block weights on worker threads: each code's value times its block's scale (the definition), in pieces of whole rows that start inside a block", async () => {
  // 3,000 columns: a 16 MiB piece is 5,592 rows, not a multiple of the 128-row blocks; the last block column is 56 wide
  const [out, inF] = [6000, 3000];
  const ck = fp8Checkpoint("fp8", [
    { name: "a.weight", shape: [out, inF], codes: fp8Codes(out * inF) },
    { name: "b.weight", shape: [3, 4], codes: fp8Codes(12) },
  ]);
  const src = checkpointSource(ck);
  assert.equal(src.locate?.("a.weight")?.dtype, "F8_E4M3");
  const pooled = new Two([out, inF], [3, 4]);
  assert.equal(await loadParametersAsync(pooled, src, same, () => true, "", undefined, 0), 2);
  const scales = blockScales([out, inF]);
  const want = Float32Array.from(fp8Codes(out * inF), (b, i) => {
    const [r, c] = [Math.floor(i / inF), i % inF];
    return fp8e4m3ToF32(b) * (scales[Math.floor(r / 128) * Math.ceil(inF / 128) + Math.floor(c / 128)] as number);
  });
  assert.equal(firstDifference(pooled.getSubmodule("a").param("weight").data, want), -1);
  const sync = new Two([out, inF], [3, 4]);
  loadParameters(sync, src, same);
  sameValues(pooled, sync);
  // an array of another size is not filled (a new one is made, as for BF16), so a size error stays the mapping's
  const wrong = new Float32Array(5);
  const read = src.readF32("b.weight", wrong);
  assert.notEqual(read.data, wrong);
  assert.equal(firstDifference(read.data, sync.getSubmodule("b").param("weight").data), -1);
});

test("loadParametersAsync of FP8 block weights: a NaN code fails as loadParameters fails, naming the tensor", async () => {
  const codes = fp8Codes(12);
  codes[7] = 0x7f;
  const ck = fp8Checkpoint("fp8-nan", [
    { name: "a.weight", shape: [2, 2], codes: fp8Codes(4) },
    { name: "b.weight", shape: [3, 4], codes },
  ]);
  const src = checkpointSource(ck);
  const message = async (load: () => unknown): Promise<string> => {
    try {
      await load();
    } catch (e) {
      assert.ok(e instanceof NumericalError, String(e));
      return e.message;
    }
    assert.fail("the load did not fail");
  };
  const sync = await message(() => loadParameters(new Two(2, [3, 4]), src, same));
  const pooled = await message(() => loadParametersAsync(new Two(2, [3, 4]), src, same, () => true, "", undefined, 0));
  assert.equal(pooled, sync);
  assert.match(pooled, /tensor "b\.weight": value NaN at flat index 7/);
});

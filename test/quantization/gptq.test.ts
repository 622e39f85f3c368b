import { test } from "node:test";
import assert from "node:assert/strict";
import { gptqQuantize, gptqWithPrep, hinvPanels, prepareGptq, rtnQuantize } from "../../src/quantization/gptq.js";
import { upperCholeskyOfInverse } from "../../src/engine/linalg.js";
import { randn } from "../rand.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { golden, goldenInts, assertClose, assertIntsEqual } from "../helpers.js";
import { rawToInts } from "../../src/io/safetensors.js";

const g = golden("gptq-layer1-expert0-gate_proj.safetensors");
const W = g.readF32("weight").data;
const H = g.readF32("H").data;
const [out, inF] = g.info("weight").shape as [number, number];
const scaleOf = (name: string): Float32Array => g.readF32(name).data;

test("RTN int4 symmetric group 32: codes and bf16 scales exact", () => {
  const args = resolveScheme("W4A16", { groupSize: 32 }).weights;
  const q = rtnQuantize(W, out, inF, args, "BF16", "gate_proj");
  assertIntsEqual("rtn.q", q.codes, rawToInts(g.readRaw("rtn.q"), "rtn.q"));
  assertIntsEqual("rtn.scale", q.params.scale, scaleOf("rtn.scale"));
});

for (const actorder of ["none", "static"] as const) {
  test(`GPTQ (actorder ${actorder}): scales exact, at least 99.5% of codes equal to the reference`, async () => {
    const args = resolveScheme("W4A16", { groupSize: 32, actorder: actorder === "none" ? null : "static" }).weights;
    const r = await gptqQuantize(W, out, inF, H, args, "BF16", "gate_proj", { dampening: 0.01, blockSize: 128 });
    assertIntsEqual(`gptq.${actorder}.scale`, r.weight.params.scale, scaleOf(`gptq.${actorder}.scale`));
    const ref = goldenInts(g, `gptq.${actorder}.q`);
    let same = 0;
    for (const [i, v] of ref.entries()) same += r.weight.codes[i] === v ? 1 : 0;
    const frac = same / ref.length;
    assert.ok(frac >= 0.995, `gptq.${actorder}.q: only ${(frac * 100).toFixed(3)}% of ${ref.length} codes match`);
    assert.ok(r.loss > 0 && Number.isFinite(r.loss));
  });
}

test("GPTQ above the blocked-factorization size: codes equal those from a float64 Hinv (>= 99.9%)", async () => {
  const n = 320; // > LINALG_BLOCK: Hinv comes from the blocked float32 factorization
  const rows = 48;
  const X = randn([2 * n, n], 11).data;
  const Hn = new Float32Array(n * n);
  for (let t = 0; t < 2 * n; t++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) Hn[i * n + j] = (Hn[i * n + j] as number) + 2 * (X[t * n + i] as number) * (X[t * n + j] as number);
  const Wn = randn([rows, n], 12, 0.02).data;
  const args = resolveScheme("W4A16", { groupSize: 32 }).weights;
  const prep = await prepareGptq(Hn, n, args.actorder, "big");
  // the same preparation with Hinv from the float64 reference
  const Hp = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) Hp[i * n + j] = Hn[(prep.perm[i] as number) * n + (prep.perm[j] as number)] as number;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += Hp[i * n + i] as number;
  mean = Math.fround(mean / n);
  for (let i = 0; i < n; i++) Hp[i * n + i] = Math.fround((Hp[i * n + i] as number) + 0.01 * mean);
  const Hinv = new Float32Array(upperCholeskyOfInverse(Hp, n));
  assertClose("Hinv (blocked vs float64)", prep.Hinv, Hinv, 1e-5);
  const a = await gptqWithPrep(Wn, rows, prep, args, "BF16", "big");
  const b = await gptqWithPrep(Wn, rows, { ...prep, Hinv, panels: hinvPanels(Hinv, n, prep.blockSize) }, args, "BF16", "big");
  let same = 0;
  for (const [i, v] of a.weight.codes.entries()) same += v === b.weight.codes[i] ? 1 : 0;
  assert.ok(same / a.weight.codes.length >= 0.999, `only ${same} of ${a.weight.codes.length} codes match`);
  assertIntsEqual("scales", a.weight.params.scale, b.weight.params.scale);
});

test("Hinv's panels: each block's rows of Hinv over the later columns, transposed, block after block", () => {
  const n = 10;
  const Hinv = Float32Array.from({ length: n * n }, (_, i) => i);
  const p = hinvPanels(Hinv, n, 4); // blocks [0,4), [4,8), [8,10)
  const expect: number[] = [];
  for (const [i1, i2] of [
    [0, 4],
    [4, 8],
    [8, 10],
  ] as const)
    for (let j = i2; j < n; j++) for (let k = i1; k < i2; k++) expect.push(k * n + j);
  assert.deepEqual([...p], expect);
});

test("GPTQ's result does not depend on the block size beyond float rounding (blocks of 32, 48 and 128 columns, one partial)", async () => {
  const args = resolveScheme("W4A16", { groupSize: 32, actorder: "static" }).weights;
  const codes = [];
  for (const blockSize of [32, 48, 128]) {
    const r = await gptqQuantize(W, out, inF, H, args, "BF16", "gate_proj", { dampening: 0.01, blockSize });
    codes.push(r.weight.codes);
  }
  const [a, ...rest] = codes as [Int8Array | Uint8Array, ...(Int8Array | Uint8Array)[]];
  for (const b of rest) {
    let same = 0;
    for (const [i, v] of a.entries()) same += b[i] === v ? 1 : 0;
    assert.ok(same / a.length >= 0.999, `only ${same} of ${a.length} codes match`);
  }
});

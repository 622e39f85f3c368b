/**
 * GPTQ's WebAssembly SIMD loops (quantization/gptq-simd.ts) against the JavaScript ones they
 * replace: the same bits for every scheme GPTQ runs (codes, dequantized weight, scales, loss per
 * row), with actorder and a dead column; ties at half a step and clamped values column by column;
 * rows that are not a multiple of 4 take the JavaScript loops and agree with the SIMD ones; group
 * extremes (the min-max scales' input) as computeQParams finds them; a memory that cannot grow
 * leaves a job to the JavaScript loops.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type GptqResult, gptqWithPrep, prepareGptq } from "../../src/quantization/gptq.js";
import { quantizeColumn, releaseColumns, setSimdColumns, takeColumnArrays, toColumns } from "../../src/quantization/gptq-columns.js";
import { giveColumns, takeColumns } from "../../src/quantization/gptq-simd.js";
import { type SchemeName, resolveScheme } from "../../src/quantization/scheme.js";
import { randn } from "../rand.js";

const bits = (a: ArrayLike<number> & { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }): Uint8Array =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

async function both<T>(fn: () => Promise<T> | T): Promise<{ simd: T; js: T }> {
  const was = setSimdColumns(true);
  try {
    const simd = await fn();
    setSimdColumns(false);
    return { simd, js: await fn() };
  } finally {
    setSimdColumns(was);
  }
}

/** A Hessian 2 X^T X of random inputs with column `deadColumn` never active. */
function hessian(n: number, seed: number, deadColumn: number): Float32Array {
  const X = randn([2 * n, n], seed).data;
  for (let t = 0; t < 2 * n; t++) X[t * n + deadColumn] = 0;
  const H = new Float32Array(n * n);
  for (let t = 0; t < 2 * n; t++)
    for (let i = 0; i < n; i++) {
      const xi = X[t * n + i] as number;
      for (let j = 0; j < n; j++) H[i * n + j] = (H[i * n + j] as number) + 2 * xi * (X[t * n + j] as number);
    }
  return H;
}

function assertSame(what: string, a: GptqResult, b: GptqResult): void {
  assert.deepEqual(bits(a.weight.codes), bits(b.weight.codes), `${what}: codes`);
  assert.deepEqual(bits(a.dequantized), bits(b.dequantized), `${what}: dequantized weight`);
  assert.deepEqual(bits(a.weight.params.scale), bits(b.weight.params.scale), `${what}: scales`);
  assert.deepEqual(bits(a.rowLoss), bits(b.rowLoss), `${what}: loss per row`);
  assert.equal(a.loss, b.loss, `${what}: loss`);
}

const SCHEMES: SchemeName[] = ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8", "NVFP4A16", "MXFP4A16"];

test("GPTQ through the SIMD loops gives the JavaScript loops' bits for every scheme (actorder, a dead column)", async () => {
  const [out, inF] = [36, 256];
  const H = hessian(inF, 31, 7);
  const W = randn([out, inF], 32, 0.02).data;
  for (const name of SCHEMES) {
    const args = { ...resolveScheme(name).weights, actorder: "static" as const };
    const prep = await prepareGptq(H, inF, args.actorder, name, 0.01, 64);
    const r = await both(() => gptqWithPrep(W, out, prep, args, "BF16", name));
    assertSame(name, r.simd, r.js);
    assert.ok(r.simd.loss > 0, `${name}: a positive loss`);
  }
});

test("the SIMD loops take rows and columns in multiples of 4; 38 rows take the JavaScript loops and agree row for row", async () => {
  const was = setSimdColumns(true);
  const perm = Int32Array.from({ length: 64 }, (_, i) => i);
  try {
    for (const [out, inF, simd] of [
      [36, 64, true],
      [38, 64, false],
      [36, 62, false],
    ] as const) {
      const c = takeColumnArrays(out, inF, 1, 8, true, perm);
      assert.equal(c.simd !== null, simd, `${out} x ${inF}`);
      releaseColumns(c);
    }
    const inF = 128;
    const H = hessian(inF, 41, 3);
    const W = randn([38, inF], 42, 0.02).data;
    const args = resolveScheme("W4A16", { groupSize: 32 }).weights;
    const prep = await prepareGptq(H, inF, args.actorder, "rows");
    const all = await gptqWithPrep(W, 38, prep, args, "BF16", "rows");
    const first = await gptqWithPrep(W.slice(0, 36 * inF), 36, prep, args, "BF16", "rows");
    assert.deepEqual(bits(first.weight.codes), bits(all.weight.codes.subarray(0, 36 * inF)));
    assert.deepEqual(bits(first.dequantized), bits(all.dequantized.subarray(0, 36 * inF)));
    assert.deepEqual(bits(first.rowLoss), bits(all.rowLoss.subarray(0, 36)));
  } finally {
    setSimdColumns(was);
  }
});

test("one int column: ties at half a step round to even, values past the range clamp, the error spreads alike", async () => {
  const [out, inF] = [16, 8];
  const perm = Int32Array.from({ length: inF }, (_, i) => i);
  const Hinv = Float32Array.from({ length: inF * inF }, (_, i) => (i % (inF + 1) === 0 ? 0.75 : i % 3 === 0 ? -0.3 : 0.1));
  for (const name of ["W4A16", "W4A16_ASYM", "W8A16"] as const) {
    const args = resolveScheme(name, { groupSize: 8 }).weights;
    // step s: w / s lands on k + 0.5 for k from -10 to 9 (past the 4-bit range at both ends), and on -0.25
    const W = new Float32Array(out * inF);
    for (let r = 0; r < out; r++) for (let j = 0; j < inF; j++) W[r * inF + j] = (r - 10 + 0.5) * 0.125 + (j === 0 ? 0 : 0.01 * j);
    W[5 * inF] = -0.25 * 0.125;
    const run = (): Uint8Array[] => {
      const c = takeColumnArrays(out, inF, 1, inF, true, perm);
      try {
        toColumns(c, { weight: W, dead: new Uint8Array(inF), args, dtype: "BF16", name });
        c.scaleT.fill(0.125); // every w / s of column 0 exact
        c.zpT.fill(name === "W4A16_ASYM" ? 3 : 0);
        quantizeColumn(c, args, Hinv, 0, 0, 0, inF);
        return [bits(c.Wt), bits(c.codesT.subarray(0, out)), bits(c.errs.subarray(0, out)), bits(c.rowLoss)].map((a) => a.slice());
      } finally {
        releaseColumns(c);
      }
    };
    const r = await both(run);
    for (const [i, what] of ["weight", "codes", "errors", "loss"].entries()) assert.deepEqual(r.simd[i], r.js[i], `${name}: ${what}`);
    if (name === "W4A16")
      assert.deepEqual([...new Int8Array((r.simd[1] as Uint8Array).buffer)], [-8, -8, -8, -6, -6, 0, -4, -2, -2, 0, 0, 2, 2, 4, 4, 6]);
  }
});

test("group extremes in SIMD: NaN skipped, -0 never a minimum, a shorter last group, as computeQParams's loop", () => {
  const [out, inF, groupSize] = [3, 40, 16]; // groups of 16, 16 and 8
  const c = takeColumns();
  try {
    const [mins, maxs, src] = c.layout([8 * out * 3, 8 * out * 3, 4 * out * inF]) as [number, number, number];
    const W = c.f32(src, out * inF);
    for (let i = 0; i < W.length; i++) W[i] = Math.sin(i * 1.7) * (i % 7);
    W.fill(Number.NaN, 5, 9);
    W.fill(-0, inF, 2 * inF); // row 1: only zeros, negative
    W[2 * inF + 33] = Number.NaN;
    c.kernels.groupExtremes(src, out, 4 * inF, 4 * groupSize, mins, maxs);
    const expect = (pick: (v: number, m: number) => boolean): number[] => {
      const e: number[] = [];
      for (let r = 0; r < out; r++)
        for (let g0 = 0; g0 < inF; g0 += groupSize) {
          let m = 0;
          for (let j = g0; j < Math.min(inF, g0 + groupSize); j++) if (pick(W[r * inF + j] as number, m)) m = W[r * inF + j] as number;
          e.push(m);
        }
      return e;
    };
    const got = (a: number): number[] => [...new Float64Array(c.memory.buffer, a, out * 3)];
    assert.deepEqual(
      got(mins),
      expect((v, m) => v < m),
    );
    assert.deepEqual(
      got(maxs),
      expect((v, m) => v > m),
    );
    assert.ok(Object.is(got(mins)[3], 0), "row 1's minimum is +0");
  } finally {
    giveColumns(c, 0);
  }
});

test("a WebAssembly memory that cannot grow leaves the job to the JavaScript loops, with their bits; the next job takes the SIMD loops again", async () => {
  const [out, inF] = [36, 128];
  const H = hessian(inF, 51, 5);
  const W = randn([out, inF], 52, 0.02).data;
  const args = resolveScheme("W4A16", { groupSize: 32 }).weights;
  const prep = await prepareGptq(H, inF, args.actorder, "grow");
  const { js } = await both(() => gptqWithPrep(W, out, prep, args, "BF16", "grow"));
  // the thread's kept memory is in use: the job lays out a new one, which must grow
  const held = takeColumns();
  const grow = WebAssembly.Memory.prototype.grow;
  let tries = 0;
  WebAssembly.Memory.prototype.grow = () => {
    tries++;
    throw new RangeError("WebAssembly.Memory.grow(): Maximum memory size exceeded");
  };
  let r: GptqResult;
  try {
    r = await gptqWithPrep(W, out, prep, args, "BF16", "grow");
  } finally {
    WebAssembly.Memory.prototype.grow = grow;
    giveColumns(held, Number.POSITIVE_INFINITY);
  }
  assert.ok(tries > 0, "the memory was asked to grow");
  assertSame("without memory to grow", r, js);
  const c = takeColumnArrays(out, inF, 4, 8, true, prep.perm);
  assert.ok(c.simd !== null, "a later job takes the SIMD loops");
  releaseColumns(c);
});

test("the SIMD transposes go in tiles of columns: 300 columns (a last tile of each transpose partial) give the JavaScript loops' bits", async () => {
  const [out, inF] = [40, 300];
  const H = hessian(inF, 61, 11);
  const W = randn([out, inF], 62, 0.02).data;
  for (const args of [
    resolveScheme("W4A16", { groupSize: 20 }).weights,
    { ...resolveScheme("W8A16", { groupSize: 60 }).weights, actorder: "static" as const },
  ]) {
    const prep = await prepareGptq(H, inF, args.actorder, "tiles", 0.01, 64);
    const r = await both(() => gptqWithPrep(W, out, prep, args, "BF16", "tiles"));
    assertSame(`${args.numBits} bits`, r.simd, r.js);
  }
});

/**
 * The data-free path's hot loops are rewritten for speed (float32 bits instead of comparisons and
 * a binary search); they must give the plain definitions' codes value for value: FP8 E4M3 encoding
 * against a reference that scans every code, over a spread of all float32 bit patterns and every
 * value near a code or a midpoint between codes; the FP4, FP8 and integer code loops of
 * quantizeWithParams against quantizeFp4, quantizeFp8 and quantizeInt element by element.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { f32ToFp8e4m3 } from "../../src/engine/dtype.js";
import { computeQParams, intRange, quantizeFp4, quantizeFp8, quantizeInt, quantizeWithParams } from "../../src/quantization/params.js";
import { resolveScheme } from "../../src/quantization/scheme.js";

/** e4m3fn's value of a code 0..126 (positive), from its fields. */
const value = (c: number): number => (c >> 3 === 0 ? (c & 7) * 2 ** -9 : (1 + (c & 7) / 8) * 2 ** ((c >> 3) - 7));

/** The nearest code by a scan over all of them; ties to the even code; saturating at 448; sign kept for -0. */
function referenceFp8(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.min(Math.abs(x), 448);
  let best = 0;
  for (let c = 1; c <= 126; c++) {
    const d = Math.abs(value(c) - a) - Math.abs(value(best) - a);
    if (d < 0 || (d === 0 && (c & 1) === 0)) best = c;
  }
  return sign | best;
}

test("f32ToFp8e4m3 equals a scan over every code: a spread of float32 bit patterns, every value near a code or a midpoint, non-float32 doubles", () => {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const xs: number[] = [0, -0, Infinity, -Infinity, NaN, 1e-45, 3.4e38, 448.00001, 0.1, 1 / 3];
  for (let b = 0; b < 2 ** 32; b += 65521) {
    u[0] = b;
    xs.push(f[0] as number);
  }
  for (let c = 0; c <= 126; c++)
    for (const v of [value(c), c < 126 ? (value(c) + value(c + 1)) / 2 : 464]) {
      f[0] = v;
      for (let d = -3; d <= 3; d++) {
        const w = new Uint32Array(Float32Array.of(v).buffer);
        w[0] = (w[0] as number) + d;
        const near = new Float32Array(w.buffer)[0] as number;
        xs.push(near, -near);
      }
    }
  let checked = 0;
  for (const x of xs) {
    if (Number.isNaN(x)) continue;
    assert.equal(f32ToFp8e4m3(x), referenceFp8(x), `f32ToFp8e4m3(${x})`);
    checked++;
  }
  assert.equal(f32ToFp8e4m3(NaN), 0x7f);
  assert.ok(checked > 60000);
});

/** Weights of every kind a code loop meets: random magnitudes, zeros of both signs, values on rounding thresholds of a group's scale. */
function weights(out: number, inF: number): Float32Array {
  const W = new Float32Array(out * inF);
  let seed = 12345;
  const rnd = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  for (let i = 0; i < W.length; i++) W[i] = (rnd() - 0.5) * 2 ** Math.floor(rnd() * 12 - 8);
  for (let i = 0; i < W.length; i += 7) W[i] = i % 14 === 0 ? 0 : -0;
  // a row whose values sit on FP4's thresholds and FP8's midpoints once divided by its scale
  const ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, 1.0625, 1.1875, 432, 448];
  for (let c = 0; c < inF; c++) W[c] = (c % 2 ? -1 : 1) * (ties[c % ties.length] as number);
  return W;
}

test("quantizeWithParams gives quantizeFp4's, quantizeFp8's and quantizeInt's codes element by element (NVFP4, MXFP4, FP8 block and channel, int symmetric and asymmetric)", () => {
  const out = 24;
  const inF = 256;
  const W = weights(out, inF);
  for (const name of ["NVFP4A16", "MXFP4A16", "FP8_BLOCK", "FP8_DYNAMIC", "W4A16", "W4A16_ASYM", "W8A16"]) {
    const args = resolveScheme(name).weights;
    const p = computeQParams(W, out, inF, args, "BF16", name);
    const codes = quantizeWithParams(W, out, inF, args, p);
    const { qmin, qmax } = intRange(args.numBits);
    for (let r = 0; r < out; r++)
      for (let c = 0; c < inF; c++) {
        const gi = r * p.groups + Math.floor(c / p.groupSize);
        const w = W[r * inF + c] as number;
        const s = p.scale[gi] as number;
        const want =
          args.type === "int"
            ? quantizeInt(w, s, p.zeroPoint ? (p.zeroPoint[gi] as number) : 0, qmin, qmax)
            : args.numBits === 4
              ? quantizeFp4(w, s)
              : quantizeFp8(w, s);
        assert.equal(codes[r * inF + c], want, `${name} [${r}, ${c}]: w ${w}, scale ${s}`);
      }
  }
});

import {
  FP4_E2M1_MAX,
  FP8_E4M3_MAX,
  f16BitsToF32,
  f32ToF16Bits,
  f32ToFp4e2m1,
  f32ToFp8e4m3,
  fp4e2m1ToF32,
  fp8e4m3ToF32,
  roundToBf16,
} from "../engine/dtype.js";
import { NumericalError, UsageError } from "../errors.js";
import { type QuantArgs, isMxfp4, isNvfp4 } from "./scheme.js";

/** float32 machine epsilon: the scale used where a group is all zeros. */
export const F32_EPS = 1.1920928955078125e-7;

/** dtype in which scales are stored (the checkpoint's). */
export type ScaleDType = "BF16" | "F16" | "F32";

/** Round a float32 value to the storage dtype of scales. */
export function roundScale(x: number, dtype: ScaleDType): number {
  if (dtype === "BF16") return roundToBf16(x);
  if (dtype === "F16") return f16BitsToF32(f32ToF16Bits(x));
  return Math.fround(x);
}

/** Round half to even, as torch.round. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // halves go up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The integer range of `bits`-bit codes, as small integers (`2 ** n` is a double in V8, and slowed GPTQ's column loop 4x). */
export function intRange(bits: number): { qmin: number; qmax: number } {
  return { qmin: -(1 << (bits - 1)), qmax: (1 << (bits - 1)) - 1 };
}

/** FP8 E4M3's eps: compressed-tensors' scale for an all-zero group when scales are stored in FP8. */
export const FP8_E4M3_EPS = 0.125;

/**
 * Scales and zero points of one weight: [out, groups] each (groups = 1 per channel / tensor; a
 * block's scale repeated on each of its rows, the last group of a row possibly shorter).
 */
export interface QParams {
  groups: number;
  /** columns per group (in for per channel and per tensor) */
  groupSize: number;
  /** the scale a code is multiplied by (NVFP4: group scale / global scale) */
  scale: Float32Array;
  zeroPoint: Int32Array | null;
  /** NVFP4: the stored FP8 group scales [out, groups] and the global scale of each row (one value per Linear) */
  nvfp4?: { groupScale: Float32Array; globalScale: Float32Array };
}

export function groupLayout(args: QuantArgs, inF: number, name: string): { groups: number; groupSize: number } {
  if (args.strategy === "group" || args.strategy === "tensor_group") {
    const g = args.groupSize ?? inF;
    if (inF % g !== 0) throw new UsageError(`${name}: group size ${g} does not divide the input size ${inF}`);
    return { groups: inF / g, groupSize: g };
  }
  if (args.strategy === "block") {
    const bc = args.blockStructure?.[1] ?? inF;
    return { groups: Math.ceil(inF / bc), groupSize: bc };
  }
  if (args.strategy === "channel" || args.strategy === "tensor") return { groups: 1, groupSize: inF };
  throw new UsageError(`${name}: weights cannot be quantized per ${args.strategy}`);
}

/** Largest |w| of a weight (the statistic of NVFP4's global scale). */
export function absMax(W: Float32Array): number {
  let m = 0;
  for (let i = 0; i < W.length; i++) m = Math.max(m, Math.abs(W[i] as number));
  return m;
}

/**
 * NVFP4's global scale from the largest magnitude it covers (compressed-tensors' generate_gparam):
 * 448 * 6 / absmax in the tensor's dtype, stored as float32; 1 where that is not finite (all zeros).
 */
export function nvfp4GlobalScale(absmax: number, dtype: ScaleDType): number {
  const g = roundScale(Math.fround((FP8_E4M3_MAX * FP4_E2M1_MAX) / Math.max(absmax, 1.1754943508222875e-38)), dtype);
  return Number.isFinite(g) ? g : 1;
}

/**
 * Min-max quantization parameters of W [out, in] (float32), scales rounded to `dtype` (the
 * stored, rounded value is the one used to quantize). Per tensor: one scale repeated per row.
 * NVFP4 takes each row's global scale from `globalScale` (rows of Linears fused in vLLM share
 * one), else computes one from W.
 */
export function computeQParams(
  W: Float32Array,
  out: number,
  inF: number,
  args: QuantArgs,
  dtype: ScaleDType,
  name: string,
  globalScale?: Float32Array,
): QParams {
  const { groups, groupSize } = groupLayout(args, inF, name);
  if (isMxfp4(args)) return mxfp4Params(W, out, inF, groupSize);
  if (isNvfp4(args))
    return nvfp4Params(W, out, inF, groupSize, dtype, globalScale ?? new Float32Array(out).fill(nvfp4GlobalScale(absMax(W), dtype)));
  const mins = new Float64Array(out * groups);
  const maxs = new Float64Array(out * groups);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < groups; g++) {
      let mn = 0;
      let mx = 0; // min clamped to <= 0, max to >= 0
      const c0 = r * inF + g * groupSize;
      const c1 = c0 + Math.min(groupSize, inF - g * groupSize);
      for (let c = c0; c < c1; c++) {
        const v = W[c] as number;
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      mins[r * groups + g] = mn;
      maxs[r * groups + g] = mx;
    }
  }
  return paramsFromExtremes(mins, maxs, out, groups, groupSize, args, dtype, name);
}

/**
 * computeQParams's min-max parameters from each group's extremes (NaN skipped, min clamped to
 * <= 0 and max to >= 0; [out, groups], overwritten): blocks and tensors take the extremes of
 * their groups, then the scales and zero points.
 */
export function paramsFromExtremes(
  mins: Float64Array,
  maxs: Float64Array,
  out: number,
  groups: number,
  groupSize: number,
  args: QuantArgs,
  dtype: ScaleDType,
  name: string,
): QParams {
  const scale = new Float32Array(out * groups);
  const zeroPoint = args.type === "int" && !args.symmetric ? new Int32Array(out * groups) : null;
  if (args.strategy === "block") blockExtremes(mins, maxs, out, groups, args.blockStructure?.[0] ?? out);
  if (args.strategy === "tensor") {
    let mn = 0;
    let mx = 0;
    for (let i = 0; i < mins.length; i++) {
      mn = Math.min(mn, mins[i] as number);
      mx = Math.max(mx, maxs[i] as number);
    }
    mins.fill(mn);
    maxs.fill(mx);
  }
  for (let i = 0; i < scale.length; i++) {
    const mn = mins[i] as number;
    const mx = maxs[i] as number;
    let s: number;
    if (args.type === "float") {
      s = Math.fround(Math.max(-mn, mx) / FP8_E4M3_MAX);
    } else {
      const { qmin, qmax } = intRange(args.numBits);
      s = args.symmetric ? Math.fround(Math.max(-mn, mx) / ((qmax - qmin) / 2)) : Math.fround((mx - mn) / (qmax - qmin));
    }
    if (s === 0) s = F32_EPS;
    s = roundScale(s, dtype);
    if (!(s > 0) || !Number.isFinite(s)) throw new NumericalError(`${name}: invalid scale ${s} for group ${i} (min ${mn}, max ${mx})`);
    scale[i] = s;
    if (zeroPoint) {
      const { qmin, qmax } = intRange(args.numBits);
      zeroPoint[i] = Math.min(qmax, Math.max(qmin, roundHalfEven(qmin - mn / s)));
    }
  }
  return { groups, groupSize, scale, zeroPoint };
}

/** Each block of `rows` rows takes its rows' extremes, per group column (FP8_BLOCK). */
function blockExtremes(mins: Float64Array, maxs: Float64Array, out: number, groups: number, rows: number): void {
  for (let r0 = 0; r0 < out; r0 += rows) {
    const r1 = Math.min(out, r0 + rows);
    for (let g = 0; g < groups; g++) {
      let mn = 0;
      let mx = 0;
      for (let r = r0; r < r1; r++) {
        mn = Math.min(mn, mins[r * groups + g] as number);
        mx = Math.max(mx, maxs[r * groups + g] as number);
      }
      for (let r = r0; r < r1; r++) {
        mins[r * groups + g] = mn;
        maxs[r * groups + g] = mx;
      }
    }
  }
}

/**
 * One NVFP4 group's scale from its largest magnitude and the global scale: absmax / 6 in `dtype`,
 * times the global scale, rounded to FP8 E4M3 (0.125 where that is zero); `scale`, what a code is
 * multiplied by, is that over the global scale. Weights and activations (NVFP4's W4A4) alike.
 */
export function nvfp4GroupScale(absmax: number, global: number, dtype: ScaleDType): { fp8: number; scale: number } {
  const local = roundScale(Math.fround(absmax / FP4_E2M1_MAX), dtype);
  const fp8 = fp8e4m3ToF32(f32ToFp8e4m3(Math.fround(global * local))) || FP8_E4M3_EPS;
  return { fp8, scale: Math.fround(fp8 / global) };
}

/**
 * NVFP4 group scales (compressed-tensors' calculate_qparams with a global scale): per group of 16,
 * local = absmax / 6 in the weight's dtype, times the row's global scale, rounded to FP8 E4M3
 * (saturating), 0.125 where that is zero; a code is multiplied by FP8 scale / global scale.
 */
function nvfp4Params(W: Float32Array, out: number, inF: number, groupSize: number, dtype: ScaleDType, globalScale: Float32Array): QParams {
  const groups = inF / groupSize;
  const groupScale = new Float32Array(out * groups);
  const scale = new Float32Array(out * groups);
  for (let r = 0; r < out; r++) {
    const g = globalScale[r] as number;
    for (let k = 0; k < groups; k++) {
      let m = 0;
      const base = r * inF + k * groupSize;
      for (let c = 0; c < groupSize; c++) m = Math.max(m, Math.abs(W[base + c] as number));
      const { fp8, scale: eff } = nvfp4GroupScale(m, g, dtype);
      groupScale[r * groups + k] = fp8;
      scale[r * groups + k] = eff;
    }
  }
  return { groups, groupSize, scale, zeroPoint: null, nvfp4: { groupScale, globalScale } };
}

/**
 * MXFP4's E8M0 exponent of a group with largest magnitude `absmax` (compressed-tensors'
 * generate_mx_scales): absmax rounded to a power of two (up when its mantissa is >= 1.75), its
 * exponent minus 2 (FP4's largest exponent), biased by 127, clamped to a byte; 0 for zero.
 */
export function mxfp4Exponent(absmax: number): number {
  const bits = new Uint32Array(Float32Array.of(absmax).buffer)[0] as number;
  const rounded = ((bits + (1 << 21)) & 0xff800000) >>> 0;
  const p = new Float32Array(Uint32Array.of(rounded).buffer)[0] as number;
  if (!(p > 0)) return 0;
  return Math.min(255, Math.max(0, 127 + Math.floor(Math.log2(p)) - 2));
}

/** MXFP4 scales: 2^(exponent - 127) per group of the row. */
function mxfp4Params(W: Float32Array, out: number, inF: number, groupSize: number): QParams {
  const groups = inF / groupSize;
  const scale = new Float32Array(out * groups);
  for (let r = 0; r < out; r++)
    for (let k = 0; k < groups; k++) {
      let m = 0;
      const base = r * inF + k * groupSize;
      for (let c = 0; c < groupSize; c++) m = Math.max(m, Math.abs(W[base + c] as number));
      scale[r * groups + k] = 2 ** (mxfp4Exponent(m) - 127);
    }
  return { groups, groupSize, scale, zeroPoint: null };
}

/** FP4 E2M1 code of w with effective scale s: e2m1(clamp(w / s, -6, 6)). */
export function quantizeFp4(w: number, s: number): number {
  return f32ToFp4e2m1(Math.fround(w / s));
}

/** Integer code of w with (scale, zero point): clamp(round(w / s) + zp, qmin, qmax). */
export function quantizeInt(w: number, s: number, zp: number, qmin: number, qmax: number): number {
  return Math.min(qmax, Math.max(qmin, roundHalfEven(Math.fround(w / s)) + zp));
}

/** FP8 code of w with scale s: e4m3fn(clamp(w / s, -448, 448)). */
export function quantizeFp8(w: number, s: number): number {
  return f32ToFp8e4m3(Math.max(-FP8_E4M3_MAX, Math.min(FP8_E4M3_MAX, Math.fround(w / s))));
}

/** A quantized weight: codes (int values or fp8 bytes) and parameters. */
export interface QuantizedWeight {
  args: QuantArgs;
  out: number;
  inF: number;
  /** int: values in [qmin, qmax]; float: e4m3fn bytes */
  codes: Int8Array | Uint8Array;
  params: QParams;
}

/**
 * Quantize W with fixed parameters (round to nearest): the codes. Group by group with the scale
 * and zero point hoisted, integer rounding inlined, and one loop per code type (each monomorphic:
 * the data-free path's hot loop); the arithmetic is quantizeInt's, quantizeFp8's and
 * quantizeFp4's, value for value.
 */
export function quantizeWithParams(W: Float32Array, out: number, inF: number, args: QuantArgs, p: QParams): Int8Array | Uint8Array {
  const { groups, groupSize, scale, zeroPoint } = p;
  if (args.type === "int") {
    const codes = new Int8Array(out * inF);
    const { qmin, qmax } = intRange(args.numBits);
    for (let r = 0; r < out; r++)
      for (let g = 0; g < groups; g++) {
        const c0 = r * inF + g * groupSize;
        const c1 = Math.min(r * inF + inF, c0 + groupSize);
        const gi = r * groups + g;
        intCodes(W, codes, c0, c1, scale[gi] as number, zeroPoint ? (zeroPoint[gi] as number) : 0, qmin, qmax);
      }
    return codes;
  }
  const codes = new Uint8Array(out * inF);
  const fp4 = args.numBits === 4;
  const x = new Float32Array(groupSize);
  const bits = new Int32Array(x.buffer);
  for (let r = 0; r < out; r++)
    for (let g = 0; g < groups; g++) {
      const c0 = r * inF + g * groupSize;
      const c1 = Math.min(r * inF + inF, c0 + groupSize);
      const s = scale[r * groups + g] as number;
      for (let i = c0; i < c1; i++) x[i - c0] = (W[i] as number) / s; // a float32 store: Math.fround
      if (fp4) fp4Codes(bits, codes, c0, c1);
      else fp8Codes(bits, x, codes, c0, c1);
    }
  return codes;
}

/**
 * f32ToFp4e2m1 of the float32 values whose bits are `bits[0 .. c1 - c0)` into codes[c0:c1],
 * without a branch (random signs and magnitudes mispredict every other one): the magnitude's code
 * is the number of rounding thresholds its bits pass (floats of one sign order as their bits;
 * `(t - b) >>> 31` is 1 when b > t), ties as f32ToFp4e2m1 takes them; the sign bit, except for -0.
 */
function fp4Codes(bits: Int32Array, codes: Uint8Array, c0: number, c1: number): void {
  const [t0, t1, t2, t3, t4, t5, t6] = FP4_ABOVE; // int32 locals: the loop stays in integer registers
  for (let i = c0; i < c1; i++) {
    const u = bits[i - c0] as number;
    const b = u & 0x7fffffff;
    const m =
      (((t0 - b) | 0) >>> 31) +
      (((t1 - b) | 0) >>> 31) +
      (((t2 - b) | 0) >>> 31) +
      (((t3 - b) | 0) >>> 31) +
      (((t4 - b) | 0) >>> 31) +
      (((t5 - b) | 0) >>> 31) +
      (((t6 - b) | 0) >>> 31);
    codes[i] = ((u >>> 28) & ((((0 - b) | 0) >>> 31) << 3)) | m;
  }
}

/**
 * quantizeFp8 of the float32 values `x` (bits `bits`) into codes[c0:c1]: the magnitude's bits
 * clamped to 448's without a branch, then f32ToFp8e4m3's arithmetic (subnormals, rare in weights
 * scaled to 448, take a branch).
 */
function fp8Codes(bits: Int32Array, x: Float32Array, codes: Uint8Array, c0: number, c1: number): void {
  for (let i = c0; i < c1; i++) {
    const u = bits[i - c0] as number;
    const b = u & 0x7fffffff;
    const d = (0x43e00000 - b) | 0;
    const a = b + (d & (d >> 31)); // min(b, bits of 448)
    const sign = (u >>> 24) & 0x80;
    if (a < 0x3c800000) codes[i] = sign | (Math.abs(x[i - c0] as number) * 512 + RNE_SHIFT - RNE_SHIFT);
    else codes[i] = sign | (((a + 0x7ffff + ((a >>> 20) & 1)) >>> 20) - 960);
  }
}

/** float32 bits b of a magnitude that moves its E2M1 code up past each threshold: b > these (0.25, 0.75 inclusive, 1.25, 1.75 inclusive, 2.5, 3.5 inclusive, 5). */
const FP4_ABOVE = (() => {
  const f = Float32Array.of(0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5);
  const u = new Uint32Array(f.buffer);
  // "a < t" keeps the lower code: a >= t moves up, i.e. b > bits(t) - 1
  for (const k of [1, 3, 5]) u[k] = (u[k] as number) - 1;
  return [...u] as [number, number, number, number, number, number, number];
})();

/**
 * quantizeInt over W[c0:c1] into codes. Adding and subtracting 1.5 * 2^52 rounds a double to an
 * integer, ties to even (torch.round's rule), in two additions; beyond 2^51 in magnitude it is
 * off, but such a value is clamped to qmin or qmax either way.
 */
function intCodes(W: Float32Array, codes: Int8Array, c0: number, c1: number, s: number, zp: number, qmin: number, qmax: number): void {
  for (let i = c0; i < c1; i++) {
    const q = Math.fround((W[i] as number) / s) + RNE_SHIFT - RNE_SHIFT + zp;
    // biome-ignore lint/complexity/useMathMinMax: two compares keep this hot loop free of calls
    codes[i] = q < qmin ? qmin : q > qmax ? qmax : q;
  }
}

/** 1.5 * 2^52: x + RNE_SHIFT - RNE_SHIFT rounds a double to an integer, ties to even (see intCodes). */
export const RNE_SHIFT = 6755399441055744;

/** The value of a code: integer, FP8 E4M3 byte or FP4 E2M1 nibble, by the weight's type. */
export function codeValue(args: QuantArgs): (code: number) => number {
  if (args.type === "int") return (c) => c;
  return args.numBits === 4 ? fp4e2m1ToF32 : fp8e4m3ToF32;
}

/** Dequantized float32 weight [out, in]. */
export function dequantize(q: QuantizedWeight): Float32Array {
  return dequantizeInto(q, new Float32Array(q.out * q.inF));
}

/** The dequantized weight [out, in] written into `W`: (value(code) - zero point) x scale, rounded to float32. */
export function dequantizeInto(q: QuantizedWeight, W: Float32Array): Float32Array {
  const { out, inF, params: p, codes } = q;
  const value = q.args.type === "int" ? null : codeValue(q.args);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < p.groups; g++) {
      const gi = r * p.groups + g;
      const s = p.scale[gi] as number;
      const z = p.zeroPoint ? (p.zeroPoint[gi] as number) : 0;
      const c0 = r * inF + g * p.groupSize;
      const c1 = r * inF + Math.min(inF, (g + 1) * p.groupSize);
      if (value === null) for (let i = c0; i < c1; i++) W[i] = Math.fround(((codes[i] as number) - z) * s);
      else for (let i = c0; i < c1; i++) W[i] = Math.fround((value(codes[i] as number) - z) * s);
    }
  }
  return W;
}

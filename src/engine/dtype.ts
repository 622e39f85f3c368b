/**
 * Conversions between float32 and the storage dtypes of checkpoints: BF16, F16 and FP8 e4m3fn.
 * All rounding is round-to-nearest-even, as PyTorch does.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16ToF32(bits: Uint16Array): Float32Array {
  return bf16ToF32Checked(bits).data;
}

/**
 * The same (into `out` when given), and whether every value is finite, found in the same pass: a
 * bf16 value is NaN or infinite when its exponent bits (0x7f80) are all set, that is when adding
 * 0x80 to them carries into bit 15. Two values at a time where `bits` is 4-byte aligned (one
 * 32-bit read; the low half's sum never carries into the high half).
 */
export function bf16ToF32Checked(
  bits: Uint16Array,
  out: Float32Array = new Float32Array(bits.length),
): { data: Float32Array; finite: boolean } {
  const n = bits.length;
  const o = new Uint32Array(out.buffer, out.byteOffset, n);
  const pairs = bits.byteOffset % 4 === 0 ? n >> 1 : 0;
  const w = pairs > 0 ? new Uint32Array(bits.buffer, bits.byteOffset, pairs) : new Uint32Array(0);
  let carry = 0;
  for (let k = 0; k < pairs; k++) {
    const v = w[k] as number;
    o[2 * k] = v << 16;
    o[2 * k + 1] = v & 0xffff0000;
    carry |= ((v & 0x7f807f80) >>> 0) + 0x00800080;
  }
  for (let i = 2 * pairs; i < n; i++) {
    const b = bits[i] as number;
    o[i] = b << 16;
    carry |= (b & 0x7f80) + 0x80;
  }
  return { data: out, finite: (carry & 0x80008000) === 0 };
}

export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0] as number;
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0) return ((b >>> 16) | 0x0040) & 0xffff; // NaN stays NaN
  const rounded = b + 0x7fff + ((b >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

export function f32ToBf16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToBf16Bits(values[i] as number);
  return out;
}

/** Round a float32 value to the nearest bf16 value (returned as a number). */
export function roundToBf16(x: number): number {
  u32[0] = f32ToBf16Bits(x) << 16;
  return f32[0] as number;
}

export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16BitsToF32(bits[i] as number);
  return out;
}

export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0] as number;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = mant & ((1 << shift) - 1);
    let r = mant >>> shift;
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  const rem = mant & 0x1fff;
  let r = (e << 10) | (mant >>> 13);
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++;
  return sign | r; // a carry into the exponent is the correct rounding (up to Inf)
}

export function f32ToF16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i] as number);
  return out;
}

/** FP8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7f/0xff are NaN; max 448. */
export const FP8_E4M3_MAX = 448;

export function fp8e4m3ToF32(byte: number): number {
  return FP8_VALUES[byte & 0xff] as number;
}

/** The value of an e4m3fn byte, computed (FP8_VALUES holds all 256). */
function fp8Value(byte: number): number {
  const s = byte & 0x80 ? -1 : 1;
  const e = (byte >>> 3) & 0xf;
  const m = byte & 0x7;
  if (e === 0xf && m === 0x7) return NaN;
  if (e === 0) return s * m * 2 ** -9;
  return s * (1 + m / 8) * 2 ** (e - 7);
}

const FP8_VALUES = Float64Array.from({ length: 256 }, (_, b) => fp8Value(b));

const FP8_TABLE: Float64Array = (() => {
  const t = new Float64Array(128);
  for (let i = 0; i < 127; i++) t[i] = fp8e4m3ToF32(i);
  t[127] = Infinity;
  return t;
})();

/**
 * Encode to e4m3fn: saturate to +-448, round to nearest, ties to the even code (even mantissa).
 * NaN encodes as 0x7f.
 */
export function f32ToFp8e4m3(x: number): number {
  f32[0] = x;
  if (f32[0] !== x) return fp8Search(x); // not a float32 value (or NaN)
  // a float32: from its bits (the search's result, value for value: checked over every float32 in test/engine)
  const u = u32[0] as number;
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a >= 0x43e00000) return sign | 0x7e; // 448 and beyond saturate
  if (a < 0x3c800000) return sign | (Math.abs(x) * 512 + RNE_SHIFT - RNE_SHIFT); // below 2^-6: subnormal codes of 2^-9, ties to even
  // drop 20 mantissa bits, ties to even (a carry moves into the exponent), rebias 127 -> 7
  return sign | (((a + 0x7ffff + ((a >>> 20) & 1)) >>> 20) - 960);
}

/** Adding and subtracting 1.5 * 2^52 rounds a double below 2^51 in magnitude to an integer, ties to even. */
const RNE_SHIFT = 6755399441055744;

/** f32ToFp8e4m3 for any number: a binary search over the codes' values. */
function fp8Search(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.min(Math.abs(x), FP8_E4M3_MAX);
  // binary search the largest code with value <= a among 0..126
  let lo = 0;
  let hi = 126;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if ((FP8_TABLE[mid] as number) <= a) lo = mid;
    else hi = mid - 1;
  }
  let code = lo;
  if (code < 126) {
    const below = FP8_TABLE[code] as number;
    const above = FP8_TABLE[code + 1] as number;
    const dBelow = a - below;
    const dAbove = above - a;
    if (dAbove < dBelow || (dAbove === dBelow && (code & 1) === 1)) code += 1;
  }
  return sign | code;
}

/** FP4 E2M1 magnitudes by 3-bit code (bit 3 of a code is the sign). */
export const FP4_E2M1_VALUES: readonly number[] = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
export const FP4_E2M1_MAX = 6;

/**
 * Encode to FP4 E2M1: saturate to +-6, round to nearest, ties to the even mantissa (0.25 -> 0,
 * 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), as compressed-tensors'
 * cast_to_fp4; the sign bit is set for every negative x, also one that rounds to zero (-0).
 */
export function f32ToFp4e2m1(x: number): number {
  const a = Math.abs(x);
  const m = a <= 0.25 ? 0 : a < 0.75 ? 1 : a <= 1.25 ? 2 : a < 1.75 ? 3 : a <= 2.5 ? 4 : a < 3.5 ? 5 : a <= 5 ? 6 : 7;
  return (x < 0 ? 8 : 0) | m;
}

export function fp4e2m1ToF32(code: number): number {
  const v = FP4_E2M1_VALUES[code & 7] as number;
  return code & 8 ? -v : v;
}

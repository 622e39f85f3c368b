/**
 * GPTQ's weight in columns: the column-major, permuted copy the column loop works on, its codes,
 * the block's errors, and the steps that touch every value (the transposes, quantizing a column
 * and spreading its error over the rest of its sub-block). In WebAssembly SIMD memory when the
 * shape allows (gptq-simd.ts, rows and columns a multiple of 4), else in scratch arrays with
 * JavaScript loops; both compute the same bits.
 */
import { fp4e2m1ToF32, fp8e4m3ToF32 } from "../engine/dtype.js";
import { giveBuffer, SCRATCH_KEPT_BYTES, takeBuffer } from "../engine/scratch.js";
import {
  type QParams,
  RNE_SHIFT,
  type ScaleDType,
  computeQParams,
  groupLayout,
  intRange,
  paramsFromExtremes,
  quantizeFp4,
  quantizeFp8,
} from "./params.js";
import { type QuantArgs, isMxfp4, isNvfp4 } from "./scheme.js";
import { SIMD_MAX_BYTES, type SimdColumns, giveColumns, takeColumns } from "./gptq-simd.js";

/** Rows and columns per tile of the JavaScript transposes. */
const TILE = 32;

let simdEnabled = true;

/** Whether jobs may take the WebAssembly SIMD loops (the tests compare them with the JavaScript ones); returns the previous setting. */
export function setSimdColumns(on: boolean): boolean {
  const was = simdEnabled;
  simdEnabled = on;
  return was;
}

/** The arrays of one job: Wt [inF, out] (column pos[j] holds original column j), codesT alike, errs [block, out], scales and zero points [groups, out]. */
export interface Columns {
  out: number;
  inF: number;
  Wt: Float32Array;
  codesT: Int8Array | Uint8Array;
  errs: Float32Array;
  rowLoss: Float64Array;
  scaleT: Float32Array;
  zpT: Float32Array;
  /** where each original column is processed */
  pos: Int32Array;
  simd: {
    c: SimdColumns;
    at: Record<"mins" | "maxs" | "src" | "Wt" | "codesT" | "codes" | "errs" | "scaleT" | "zpT" | "rowLoss" | "hs" | "cols", number>;
    hs: Float64Array;
  } | null;
}

/** A job's column arrays (give them back with releaseColumns). */
export function takeColumnArrays(
  out: number,
  inF: number,
  groups: number,
  blockColumns: number,
  isInt: boolean,
  perm: Int32Array,
): Columns {
  const pos = new Int32Array(inF);
  for (let c = 0; c < inF; c++) pos[perm[c] as number] = c;
  const n = out * inF;
  const sizes = {
    mins: 8 * groups * out,
    maxs: 8 * groups * out,
    src: 4 * n,
    Wt: 4 * n,
    codesT: n,
    codes: n,
    errs: 4 * blockColumns * out,
    scaleT: 4 * groups * out,
    zpT: 4 * groups * out,
    rowLoss: 8 * out,
    hs: 8 * blockColumns,
    cols: 4 * inF,
  };
  const total = Object.values(sizes).reduce((a, b) => a + b + 16, 0);
  const c = simdEnabled && out % 4 === 0 && inF % 4 === 0 && total <= SIMD_MAX_BYTES ? takeColumns() : null;
  const addrs = c ? layoutOrNull(c, Object.values(sizes)) : null;
  if (c && addrs) {
    const at = Object.fromEntries(Object.keys(sizes).map((k, i) => [k, addrs[i] as number])) as NonNullable<Columns["simd"]>["at"];
    const buf = c.memory.buffer;
    const codesT = isInt ? new Int8Array(buf, at.codesT, n) : new Uint8Array(buf, at.codesT, n);
    const rowLoss = new Float64Array(buf, at.rowLoss, out).fill(0);
    const hs = new Float64Array(buf, at.hs, blockColumns);
    return {
      out,
      inF,
      Wt: c.f32(at.Wt, n),
      codesT,
      errs: c.f32(at.errs, blockColumns * out),
      rowLoss,
      scaleT: c.f32(at.scaleT, groups * out),
      zpT: c.f32(at.zpT, groups * out),
      pos,
      simd: { c, at, hs },
    };
  }
  const codesT = isInt ? new Int8Array(takeBuffer(n), 0, n) : new Uint8Array(takeBuffer(n), 0, n);
  const floats = (len: number): Float32Array => new Float32Array(takeBuffer(4 * len), 0, len);
  return {
    out,
    inF,
    Wt: floats(n),
    codesT,
    errs: floats(blockColumns * out),
    rowLoss: new Float64Array(out),
    scaleT: new Float32Array(groups * out),
    zpT: new Float32Array(groups * out),
    pos,
    simd: null,
  };
}

/** The memory laid out, or null (and the memory given back) when it cannot grow that far: the JavaScript loops take the job. */
function layoutOrNull(c: SimdColumns, bytes: number[]): number[] | null {
  try {
    return c.layout(bytes);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    giveColumns(c, 0);
    return null;
  }
}

export function releaseColumns(c: Columns): void {
  if (c.simd) giveColumns(c.simd.c, SCRATCH_KEPT_BYTES);
  else for (const a of [c.Wt, c.errs, c.codesT]) giveBuffer(a.buffer);
}

/** What GPTQ quantizes: the weight [out, inF], its dead columns (zeroed), and how (computeQParams's arguments). */
export interface ColumnsInput {
  weight: Float32Array;
  dead: Uint8Array;
  args: QuantArgs;
  dtype: ScaleDType;
  name: string;
  globalScale?: Float32Array | undefined;
}

/**
 * The weight into Wt, its quantization parameters (computeQParams's, returned) and their scales
 * and zero points transposed. With the SIMD loops the weight is copied into their memory and
 * transposed there, and min-max groups a multiple of 4 wide take their extremes there too.
 */
export function toColumns(c: Columns, input: ColumnsInput): QParams {
  const { weight, args, dtype, name, globalScale } = input;
  const { out, inF, simd } = c;
  if (simd) simd.c.f32(simd.at.src, out * inF).set(weight.subarray(0, out * inF));
  const { groups, groupSize } = groupLayout(args, inF, name);
  let params: QParams;
  if (!simd || isNvfp4(args) || isMxfp4(args) || groupSize % 4 !== 0)
    params = computeQParams(weight, out, inF, args, dtype, name, globalScale);
  else {
    const { at } = simd;
    simd.c.kernels.groupExtremes(at.src, out, 4 * inF, 4 * groupSize, at.mins, at.maxs);
    const extremes = (a: number): Float64Array => new Float64Array(simd.c.memory.buffer, a, out * groups);
    params = paramsFromExtremes(extremes(at.mins), extremes(at.maxs), out, groups, groupSize, args, dtype, name);
  }
  transposeIn(c, weight, input.dead);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < groups; g++) {
      c.scaleT[g * out + r] = params.scale[r * groups + g] as number;
      c.zpT[g * out + r] = params.zeroPoint ? (params.zeroPoint[r * groups + g] as number) : 0;
    }
  }
  return params;
}

/** The weight [out, inF] into Wt (dead columns zero; with the SIMD loops, from its copy in their memory). */
function transposeIn(c: Columns, weight: Float32Array, dead: Uint8Array): void {
  const { out, inF, Wt, pos, simd } = c;
  if (simd) {
    const cols = new Int32Array(simd.c.memory.buffer, simd.at.cols, inF);
    for (let j = 0; j < inF; j++) cols[j] = simd.at.Wt + 4 * out * (pos[j] as number);
    simd.c.kernels.transposeIn(simd.at.src, 4 * inF, 4 * out, simd.at.cols);
    for (let j = 0; j < inF; j++) if (dead[j]) Wt.fill(0, (pos[j] as number) * out, (pos[j] as number) * out + out);
    return;
  }
  // blocked: a tile's reads and writes stay within a few cache lines per row
  for (let r0 = 0; r0 < out; r0 += TILE) {
    const r1 = Math.min(out, r0 + TILE);
    for (let j0 = 0; j0 < inF; j0 += TILE) {
      const j1 = Math.min(inF, j0 + TILE);
      for (let j = j0; j < j1; j++) {
        const wc = (pos[j] as number) * out;
        if (dead[j]) Wt.fill(0, wc + r0, wc + r1);
        else for (let r = r0; r < r1; r++) Wt[wc + r] = weight[r * inF + j] as number;
      }
    }
  }
}

/** The codes and the dequantized values back to row-major and the original column order. */
export function fromColumns(c: Columns, into?: Float32Array): { codes: Int8Array | Uint8Array; dequantized: Float32Array } {
  const { out, inF, Wt, codesT, pos, simd } = c;
  const n = out * inF;
  const codes = codesT instanceof Int8Array ? new Int8Array(n) : new Uint8Array(n);
  const dequantized = into ?? new Float32Array(n);
  if (simd) {
    const { at } = simd;
    simd.c.kernels.transposeOut(at.src, at.codes, 4 * inF, 4 * out, at.cols, at.Wt, at.codesT);
    new Uint8Array(codes.buffer, 0, n).set(new Uint8Array(simd.c.memory.buffer, at.codes, n));
    dequantized.set(simd.c.f32(at.src, n));
    return { codes, dequantized };
  }
  for (let r0 = 0; r0 < out; r0 += TILE) {
    const r1 = Math.min(out, r0 + TILE);
    for (let j0 = 0; j0 < inF; j0 += TILE) {
      const j1 = Math.min(inF, j0 + TILE);
      for (let r = r0; r < r1; r++)
        for (let j = j0; j < j1; j++) {
          const at = (pos[j] as number) * out + r;
          codes[r * inF + j] = codesT[at] as number;
          dequantized[r * inF + j] = Wt[at] as number;
        }
    }
  }
  return { codes, dequantized };
}

/**
 * Quantize column `col` in place (its codes, dequantized values, error / d into errs at column
 * `eo` of the block, the loss (w - q)^2 / d^2 / 2 per row), then spread its error over the
 * columns after it up to `to`: W[:, j] -= err * Hinv[col, j]. `g`: the column's group.
 */
export function quantizeColumn(c: Columns, args: QuantArgs, Hinv: Float32Array, col: number, g: number, eo: number, to: number): void {
  const { out, inF, simd } = c;
  const d = Hinv[col * inF + col] as number;
  if (!simd) {
    if (args.type === "int") quantizeColumnInt(c, col * out, g * out, eo * out, d, args.numBits);
    else quantizeColumnFloat(c, col * out, g * out, eo * out, d, args.numBits === 4);
    spreadError(c.Wt, c.errs, eo * out, out, Hinv, col * inF, col + 1, to);
    return;
  }
  const { at, hs, c: k } = simd;
  for (let j = col + 1; j < to; j++) hs[j - col - 1] = Hinv[col * inF + j] as number;
  const [wc, errs, bytes] = [at.Wt + 4 * col * out, at.errs + 4 * eo * out, 4 * out];
  if (args.type === "int") {
    const { qmin, qmax } = intRange(args.numBits);
    k.kernels.quantSpreadInt(
      wc,
      at.codesT + col * out,
      errs,
      at.scaleT + 4 * g * out,
      at.zpT + 4 * g * out,
      at.rowLoss,
      bytes,
      at.hs,
      to - col - 1,
      d,
      2 * d * d,
      qmin,
      qmax,
    );
  } else {
    quantizeColumnFloat(c, col * out, g * out, eo * out, d, args.numBits === 4);
    k.kernels.spread(wc, errs, bytes, at.hs, to - col - 1);
  }
}

/** W[:, j] -= err * Hinv[col, j] for j in [from, to) (column-major W; the error at errs[eo:eo+out]): the error of one column spread over the next. */
function spreadError(
  Wt: Float32Array,
  errs: Float32Array,
  eo: number,
  out: number,
  Hinv: Float32Array,
  hrow: number,
  from: number,
  to: number,
): void {
  for (let j = from; j < to; j++) {
    const h = Hinv[hrow + j] as number;
    const wj = j * out;
    for (let r = 0; r < out; r++) Wt[wj + r] = (Wt[wj + r] as number) - (errs[eo + r] as number) * h;
  }
}

/**
 * Quantize the column at `wc` (int) in place: codes, dequantized values, the error scaled by 1/d
 * (into errs at `eo`) and the loss (w - q)^2 / d^2 / 2, per row; `g`: the offset of the column's
 * group in scaleT / zpT. Rounding half to even, as torch.round (RNE_SHIFT).
 */
function quantizeColumnInt(c: Columns, wc: number, g: number, eo: number, d: number, bits: number): void {
  const { Wt, errs, rowLoss, scaleT, zpT, out } = c;
  const codesT = c.codesT as Int8Array;
  const { qmin, qmax } = intRange(bits);
  const d2 = 2 * d * d;
  for (let r = 0; r < out; r++) {
    const w = Wt[wc + r] as number;
    const s = scaleT[g + r] as number;
    const z = zpT[g + r] as number;
    let q = Math.fround(w / s) + RNE_SHIFT - RNE_SHIFT + z;
    // biome-ignore lint/complexity/useMathMinMax: two compares keep this hot loop free of calls
    q = q < qmin ? qmin : q > qmax ? qmax : q;
    codesT[wc + r] = q;
    const dq = Math.fround((q - z) * s);
    Wt[wc + r] = dq;
    const e = w - dq;
    errs[eo + r] = Math.fround(e) / d;
    rowLoss[r] = (rowLoss[r] as number) + (e * e) / d2;
  }
}

/** The same for FP8 (e4m3fn codes) or FP4 (e2m1 codes). */
function quantizeColumnFloat(c: Columns, wc: number, g: number, eo: number, d: number, fp4: boolean): void {
  const { Wt, errs, rowLoss, scaleT, out } = c;
  const codesT = c.codesT as Uint8Array;
  const d2 = 2 * d * d;
  for (let r = 0; r < out; r++) {
    const w = Wt[wc + r] as number;
    const s = scaleT[g + r] as number;
    const q = fp4 ? quantizeFp4(w, s) : quantizeFp8(w, s);
    codesT[wc + r] = q;
    const dq = Math.fround((fp4 ? fp4e2m1ToF32(q) : fp8e4m3ToF32(q)) * s);
    Wt[wc + r] = dq;
    const e = w - dq;
    errs[eo + r] = Math.fround(e) / d;
    rowLoss[r] = (rowLoss[r] as number) + (e * e) / d2;
  }
}

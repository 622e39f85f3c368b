import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { upperCholeskyOfInverse } from "../engine/linalg.js";
import { NumericalError } from "../errors.js";
import { QuantArgs } from "./scheme.js";
import { QParams, QuantizedWeight, ScaleDType, codeQuantizer, computeQParams, intRange, quantizeWithParams } from "./params.js";

export interface GptqOptions {
  /** fraction of mean(diag(H)) added to the diagonal (default 0.01) */
  dampening?: number;
  /** columns per block (default 128) */
  blockSize?: number;
}

export interface GptqResult {
  weight: QuantizedWeight;
  /** the dequantized weight [out, in] (what the layer computes with from now on) */
  dequantized: Float32Array;
  /** sum over rows of (w - q)^2 / Hinv_ii^2 / 2: GPTQ's own loss estimate */
  loss: number;
  /** the same, per row */
  rowLoss: Float64Array;
}

/** Columns whose updates are applied one by one before a matrix product takes over. */
const SUB = 16;
/** Rows per tile when transposing between row- and column-major. */
const TILE = 64;

/** What GPTQ derives from a Hessian alone: shared by every Linear with the same H. */
export interface GptqPrep {
  inF: number;
  /** columns with H[i,i] == 0 (their weights are zeroed) */
  dead: Uint8Array;
  /** processing order of the columns */
  perm: Int32Array;
  /** upper Cholesky factor of inverse(damped permuted H), float32 [inF, inF] */
  Hinv: Float32Array;
  /** its transpose (rows of HinvT are columns of Hinv), for the block updates */
  HinvT: Float32Array;
}

/**
 * Dead columns, column order (actorder "static": descending diag(H)), damping
 * (`dampening` x mean diag) and Hinv = upper Cholesky of inverse(H).
 * Throws NumericalError when the damped H is not positive definite.
 */
export function prepareGptq(hessian: Float32Array, inF: number, actorder: QuantArgs["actorder"], name: string, dampening = 0.01): GptqPrep {
  const H = Float64Array.from(hessian);
  const dead = new Uint8Array(inF);
  for (let i = 0; i < inF; i++) {
    if (H[i * inF + i] === 0) {
      H[i * inF + i] = 1;
      dead[i] = 1;
    }
  }
  const perm = Int32Array.from({ length: inF }, (_, i) => i);
  if (actorder === "static") {
    const diag = Float64Array.from({ length: inF }, (_, i) => H[i * inF + i] as number);
    perm.sort((a, b) => (diag[b] as number) - (diag[a] as number) || a - b);
  }
  const Hp = new Float64Array(inF * inF);
  for (let i = 0; i < inF; i++) for (let j = 0; j < inF; j++) Hp[i * inF + j] = H[(perm[i] as number) * inF + (perm[j] as number)] as number;
  let mean = 0;
  for (let i = 0; i < inF; i++) mean += Hp[i * inF + i] as number;
  mean = Math.fround(mean / inF);
  for (let i = 0; i < inF; i++) Hp[i * inF + i] = Math.fround((Hp[i * inF + i] as number) + dampening * mean);
  const Hinv = Float32Array.from(upperCholeskyOfInverse(Hp, inF, `${name}: damped Hessian`));
  const HinvT = new Float32Array(inF * inF);
  for (let i = 0; i < inF; i++) for (let j = i; j < inF; j++) HinvT[j * inF + i] = Hinv[i * inF + j] as number;
  return { inF, dead, perm, Hinv, HinvT };
}

/**
 * GPTQ (Frantar et al., 2022) as llm-compressor runs it: scales fixed beforehand from the
 * original weight; dead columns zeroed; columns in blocks, the error of each column spread over
 * the rest of its block, and the block's error over all later columns with one matrix product
 * through the engine. Each column keeps the group of its original index. Rows are independent
 * given `prep`, so Linears sharing a Hessian share one `prep`.
 */
export async function gptqWithPrep(
  weight: Float32Array,
  out: number,
  prep: GptqPrep,
  args: QuantArgs,
  dtype: ScaleDType,
  name: string,
  blockSize = 128,
): Promise<GptqResult> {
  const { inF, dead, perm, Hinv, HinvT } = prep;
  const params: QParams = computeQParams(weight, out, inF, args, dtype, name);
  // column-major permuted weight Wt [inF, out]: a column's values are contiguous
  const Wt = new Float32Array(inF * out);
  for (let r0 = 0; r0 < out; r0 += TILE) {
    const r1 = Math.min(out, r0 + TILE);
    for (let c = 0; c < inF; c++) {
      const src = perm[c] as number;
      if (dead[src]) continue;
      for (let r = r0; r < r1; r++) Wt[c * out + r] = weight[r * inF + src] as number;
    }
  }
  const Qt = new Float32Array(inF * out);
  const err = new Float32Array(out);
  const scaleCol = new Float32Array(out);
  const zpCol = new Float32Array(out);
  const rowLoss = new Float64Array(out);
  const { code: toCode, dequant } = codeQuantizer(args);
  const isInt = args.type === "int";
  const { qmin, qmax } = intRange(args.numBits);
  const codesT = args.type === "float" ? new Uint8Array(inF * out) : new Int8Array(inF * out);
  const engine = getEngine();
  /** W[:, from:to] -= Err[:, cols] @ Hinv[cols, from:to], through the engine (transposed). */
  const update = async (ErrT: Float32Array, c0: number, count: number, from: number, to: number): Promise<void> => {
    if (to <= from) return;
    const rest = to - from;
    const HT = new Float32Array(rest * count); // Hinv[c0:c0+count, from:to] transposed
    for (let j = 0; j < rest; j++) HT.set(HinvT.subarray((from + j) * inF + c0, (from + j) * inF + c0 + count), j * count);
    await engine.subtractProduct(new Tensor(Wt.subarray(from * out, to * out), [rest, out]), new Tensor(HT, [rest, count]), new Tensor(ErrT, [count, out]));
  };
  for (let i1 = 0; i1 < inF; i1 += blockSize) {
    const i2 = Math.min(i1 + blockSize, inF);
    const count = i2 - i1;
    const ErrBlock = new Float32Array(count * out); // [count, out]
    // lazy sub-blocks: column-by-column updates stay inside SUB columns; the rest of the block
    // and the later columns get their update as matrix products
    for (let s1 = i1; s1 < i2; s1 += SUB) {
      const s2 = Math.min(s1 + SUB, i2);
      for (let col = s1; col < s2; col++) {
        const d = Hinv[col * inF + col] as number;
        const group = Math.floor((perm[col] as number) / params.groupSize);
        for (let r = 0; r < out; r++) {
          const gi = r * params.groups + group;
          scaleCol[r] = params.scale[gi] as number;
          zpCol[r] = params.zeroPoint ? (params.zeroPoint[gi] as number) : 0;
        }
        const wc = col * out;
        if (isInt) {
          quantizeColumnInt(Wt, Qt, codesT, err, rowLoss, scaleCol, zpCol, wc, out, d, qmin, qmax);
        } else {
          for (let r = 0; r < out; r++) {
            const w = Wt[wc + r] as number;
            const c = toCode(w, scaleCol[r] as number, zpCol[r] as number);
            codesT[wc + r] = c;
            const q = dequant(c, scaleCol[r] as number, zpCol[r] as number);
            Qt[wc + r] = q;
            err[r] = Math.fround(Math.fround(w - q) / d);
            rowLoss[r] = (rowLoss[r] as number) + ((w - q) * (w - q)) / (d * d) / 2;
          }
        }
        ErrBlock.set(err, (col - i1) * out);
        spreadError(Wt, err, out, Hinv, col * inF, col + 1, s2);
      }
      await update(ErrBlock.subarray((s1 - i1) * out, (s2 - i1) * out), s1, s2 - s1, s2, i2);
    }
    await update(ErrBlock, i1, count, i2, inF);
  }
  const loss = rowLoss.reduce((a, b) => a + b, 0);
  if (!Number.isFinite(loss)) throw new NumericalError(`${name}: GPTQ produced a non-finite error`);
  // back to row-major and the original column order
  const Wq = new Float32Array(out * inF);
  const codes = args.type === "float" ? new Uint8Array(out * inF) : new Int8Array(out * inF);
  for (let r0 = 0; r0 < out; r0 += TILE) {
    const r1 = Math.min(out, r0 + TILE);
    for (let c = 0; c < inF; c++) {
      const dst = perm[c] as number;
      for (let r = r0; r < r1; r++) {
        Wq[r * inF + dst] = Qt[c * out + r] as number;
        codes[r * inF + dst] = codesT[c * out + r] as number;
      }
    }
  }
  return { weight: { args, out, inF, codes, params }, dequantized: Wq, loss, rowLoss };
}

/** GPTQ of one Linear from its Hessian (prepare + quantize). */
export async function gptqQuantize(
  weight: Float32Array,
  out: number,
  inF: number,
  hessian: Float32Array,
  args: QuantArgs,
  dtype: ScaleDType,
  name: string,
  opts: GptqOptions = {},
): Promise<GptqResult> {
  const prep = prepareGptq(hessian, inF, args.actorder, name, opts.dampening ?? 0.01);
  return gptqWithPrep(weight, out, prep, args, dtype, name, opts.blockSize ?? 128);
}

/** Round to nearest with min-max parameters. */
export function rtnQuantize(weight: Float32Array, out: number, inF: number, args: QuantArgs, dtype: ScaleDType, name: string): QuantizedWeight {
  const params = computeQParams(weight, out, inF, args, dtype, name);
  return { args, out, inF, codes: quantizeWithParams(weight, out, inF, args, params), params };
}

/** W[:, j] -= err * Hinv[col, j] for j in [from, to) (column-major W): the error of one column spread over the next. */
function spreadError(Wt: Float32Array, err: Float32Array, out: number, Hinv: Float32Array, hrow: number, from: number, to: number): void {
  for (let j = from; j < to; j++) {
    const h = Hinv[hrow + j] as number;
    const wj = j * out;
    for (let r = 0; r < out; r++) Wt[wj + r] = (Wt[wj + r] as number) - (err[r] as number) * h;
  }
}

/** Quantize column `wc` (int): codes, dequantized values, the scaled error and the loss, per row. */
function quantizeColumnInt(
  Wt: Float32Array,
  Qt: Float32Array,
  codesT: Int8Array | Uint8Array,
  err: Float32Array,
  rowLoss: Float64Array,
  scaleCol: Float32Array,
  zpCol: Float32Array,
  wc: number,
  out: number,
  d: number,
  qmin: number,
  qmax: number,
): void {
  for (let r = 0; r < out; r++) {
    const w = Wt[wc + r] as number;
    const sc = scaleCol[r] as number;
    const zp = zpCol[r] as number;
    const x = Math.fround(w / sc);
    let c = Math.round(x); // halves go up; make them even
    if (c - x === 0.5 && c % 2 !== 0) c -= 1;
    c += zp;
    c = c < qmin ? qmin : c > qmax ? qmax : c;
    codesT[wc + r] = c;
    const q = Math.fround((c - zp) * sc);
    Qt[wc + r] = q;
    err[r] = Math.fround(Math.fround(w - q) / d);
    rowLoss[r] = (rowLoss[r] as number) + ((w - q) * (w - q)) / (d * d) / 2;
  }
}

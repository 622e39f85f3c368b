import { Tensor } from "../engine/tensor.js";
import { giveBuffer, takeFloats } from "../engine/scratch.js";
import { getEngine } from "../engine/index.js";
import { upperCholeskyOfInverseFast } from "../engine/linalg.js";
import { NumericalError } from "../errors.js";
import type { QuantArgs } from "./scheme.js";
import { type QuantizedWeight, type ScaleDType, computeQParams, groupLayout, quantizeWithParams } from "./params.js";
import { fromColumns, quantizeColumn, releaseColumns, takeColumnArrays, toColumns } from "./gptq-columns.js";

export interface GptqOptions {
  /** fraction of mean(diag(H)) added to the diagonal (default 0.01) */
  dampening?: number;
  /** columns per block (default 128) */
  blockSize?: number;
  /** NVFP4: each row's global scale (default: one from the weight) */
  globalScale?: Float32Array;
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

/** Columns whose updates are applied one by one before a matrix product takes over (chosen by measurement: docs/performance.md). */
const SUB = 8;
/** Columns per engine call in the block updates (how it was chosen: docs/performance.md, "Measurements behind the code"). */
const UPDATE_COLUMNS = 256;

/** What GPTQ derives from a Hessian alone: shared by every Linear with the same H. */
export interface GptqPrep {
  inF: number;
  /** columns with H[i,i] == 0 (their weights are zeroed) */
  dead: Uint8Array;
  /** processing order of the columns */
  perm: Int32Array;
  /** upper Cholesky factor of inverse(damped permuted H), float32 [inF, inF] */
  Hinv: Float32Array;
  /** columns per block (the recipe's block_size) */
  blockSize: number;
  /** the operands of the block updates, cut from Hinv once for every Linear sharing it (hinvPanels) */
  panels: Float32Array;
}

/**
 * For each block of `blockSize` columns [i1, i2) in turn, Hinv[i1:i2, i2:inF] transposed: a
 * [inF - i2, i2 - i1] panel, the left operand of the block's update of the later columns, in one
 * array (block after block). About half of Hinv's size.
 */
export function hinvPanels(Hinv: Float32Array, inF: number, blockSize: number): Float32Array {
  let size = 0;
  for (let i1 = 0; i1 < inF; i1 += blockSize) size += (inF - Math.min(inF, i1 + blockSize)) * (Math.min(inF, i1 + blockSize) - i1);
  const panels = new Float32Array(size);
  let off = 0;
  for (let i1 = 0; i1 < inF; i1 += blockSize) {
    const i2 = Math.min(inF, i1 + blockSize);
    const count = i2 - i1;
    for (let k = 0; k < count; k++) {
      const row = (i1 + k) * inF;
      for (let j = i2; j < inF; j++) panels[off + (j - i2) * count + k] = Hinv[row + j] as number;
    }
    off += (inF - i2) * count;
  }
  return panels;
}

/**
 * The same prepared Hessian in shared memory: worker threads read it without a copy per job (a
 * Qwen3-30B-A3B layer's gate/up Linears share one 2048-wide Hessian over about 100 jobs).
 */
export function sharedPrep(p: GptqPrep): GptqPrep {
  const share = <T extends Float32Array | Int32Array | Uint8Array>(a: T, make: (b: SharedArrayBuffer) => T): T => {
    const s = make(new SharedArrayBuffer(a.byteLength));
    s.set(a);
    return s;
  };
  return {
    inF: p.inF,
    dead: share(p.dead, (b) => new Uint8Array(b)),
    perm: share(p.perm, (b) => new Int32Array(b)),
    Hinv: share(p.Hinv, (b) => new Float32Array(b)),
    blockSize: p.blockSize,
    panels: share(p.panels, (b) => new Float32Array(b)),
  };
}

/**
 * Dead columns, column order (actorder "static": descending diag(H)), damping
 * (`dampening` x mean diag), Hinv = upper Cholesky of inverse(H) and its panels for blocks of
 * `blockSize` columns. Throws NumericalError when the damped H is not positive definite.
 */
export async function prepareGptq(
  hessian: Float32Array,
  inF: number,
  actorder: QuantArgs["actorder"],
  name: string,
  dampening = 0.01,
  blockSize = 128,
): Promise<GptqPrep> {
  // the permuted, damped Hessian stays here: scratch memory (fresh memory costs page faults)
  const Hp = takeFloats(inF * inF);
  try {
    // a dead column's diagonal counts as 1 (its weights are zeroed)
    const dead = Uint8Array.from({ length: inF }, (_, i) => (hessian[i * inF + i] === 0 ? 1 : 0));
    const diagOf = (i: number): number => (dead[i] ? 1 : (hessian[i * inF + i] as number));
    const perm = Int32Array.from({ length: inF }, (_, i) => i);
    if (actorder === "static") {
      const diag = Float64Array.from({ length: inF }, (_, i) => diagOf(i));
      perm.sort((a, b) => (diag[b] as number) - (diag[a] as number) || a - b);
    }
    for (let i = 0; i < inF; i++) {
      const row = (perm[i] as number) * inF;
      for (let j = 0; j < inF; j++) Hp[i * inF + j] = hessian[row + (perm[j] as number)] as number;
      Hp[i * inF + i] = diagOf(perm[i] as number);
    }
    let mean = 0;
    for (let i = 0; i < inF; i++) mean += Hp[i * inF + i] as number;
    mean = Math.fround(mean / inF);
    for (let i = 0; i < inF; i++) Hp[i * inF + i] = Math.fround((Hp[i * inF + i] as number) + dampening * mean);
    const Hinv = await upperCholeskyOfInverseFast(Hp, inF, `${name}: damped Hessian`);
    return { inF, dead, perm, Hinv, blockSize, panels: hinvPanels(Hinv, inF, blockSize) };
  } finally {
    giveBuffer(Hp.buffer);
  }
}

/**
 * GPTQ (Frantar et al., 2022) as llm-compressor runs it: scales fixed beforehand from the
 * original weight; dead columns zeroed; columns in blocks, the error of each column spread over
 * the rest of its block, and the block's error over all later columns with one matrix product
 * through the engine. Each column keeps the group of its original index. Rows are independent
 * given `prep`, so Linears sharing a Hessian share one `prep`.
 *
 * The dequantized weight is written to `into` (a fresh array when not given; `weight` itself is
 * allowed, as it is read in full before anything is written).
 */
export async function gptqWithPrep(
  weight: Float32Array,
  out: number,
  prep: GptqPrep,
  args: QuantArgs,
  dtype: ScaleDType,
  name: string,
  into?: Float32Array,
  globalScale?: Float32Array,
): Promise<GptqResult> {
  const { inF, dead, perm, Hinv, blockSize, panels } = prep;
  const bs = Math.min(blockSize, inF);
  const cols = takeColumnArrays(out, inF, groupLayout(args, inF, name).groups, bs, args.type === "int", perm);
  const left = new Float32Array(SUB * bs); // a sub-block's rows of Hinv within its block, transposed
  const HT = new Float32Array(UPDATE_COLUMNS * bs); // a block update's part of its panel
  const engine = getEngine();
  const { Wt, errs: ErrBlock, rowLoss } = cols;
  try {
    const params = toColumns(cols, { weight, dead, args, dtype, name, globalScale });
    const { groupSize } = params;
    let panel = 0; // where the block's panel starts in `panels`
    for (let i1 = 0; i1 < inF; i1 += blockSize) {
      const i2 = Math.min(i1 + blockSize, inF);
      const count = i2 - i1;
      // lazy sub-blocks: column-by-column updates stay inside SUB columns; a sub-block receives the
      // errors of the block's earlier columns in one matrix product just before it is quantized
      for (let s1 = i1; s1 < i2; s1 += SUB) {
        const s2 = Math.min(s1 + SUB, i2);
        const k = s1 - i1;
        if (k > 0) {
          // W[:, s1:s2] -= Err[:, i1:s1] @ Hinv[i1:s1, s1:s2] (transposed: Wt rows, Hinv columns)
          for (let c = 0; c < s2 - s1; c++) for (let e = 0; e < k; e++) left[c * k + e] = Hinv[(i1 + e) * inF + s1 + c] as number;
          await engine.subtractProduct(
            new Tensor(Wt.subarray(s1 * out, s2 * out), [s2 - s1, out]),
            new Tensor(left.subarray(0, (s2 - s1) * k), [s2 - s1, k]),
            new Tensor(ErrBlock.subarray(0, k * out), [k, out]),
          );
        }
        // each column's error goes straight into the block's errors
        for (let col = s1; col < s2; col++)
          quantizeColumn(cols, args, Hinv, col, Math.floor((perm[col] as number) / groupSize), col - i1, s2);
      }
      // W[:, i2:] -= Err[:, i1:i2] @ Hinv[i1:i2, i2:], UPDATE_COLUMNS later columns per engine call
      const err = new Tensor(ErrBlock.subarray(0, count * out), [count, out]);
      for (let a = i2; a < inF; a += UPDATE_COLUMNS) {
        const b = Math.min(inF, a + UPDATE_COLUMNS);
        // a copy: the panels may be shared memory, which onnxruntime does not take
        const h = HT.subarray(0, (b - a) * count);
        h.set(panels.subarray(panel + (a - i2) * count, panel + (b - i2) * count));
        await engine.subtractProduct(new Tensor(Wt.subarray(a * out, b * out), [b - a, out]), new Tensor(h, [b - a, count]), err);
      }
      panel += (inF - i2) * count;
    }
    let loss = 0;
    for (let r = 0; r < out; r++) loss += rowLoss[r] as number;
    if (!Number.isFinite(loss)) throw new NumericalError(`${name}: GPTQ produced a non-finite error`);
    // the codes and the dequantized values the column loop wrote (those dequantizeInto computes
    // from the codes, bit for bit)
    const { codes, dequantized } = fromColumns(cols, into);
    return { weight: { args, out, inF, codes, params }, dequantized, loss, rowLoss: rowLoss.slice() };
  } finally {
    releaseColumns(cols);
  }
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
  const prep = await prepareGptq(hessian, inF, args.actorder, name, opts.dampening ?? 0.01, opts.blockSize ?? 128);
  return gptqWithPrep(weight, out, prep, args, dtype, name, undefined, opts.globalScale);
}

/** Round to nearest with min-max parameters. */
export function rtnQuantize(
  weight: Float32Array,
  out: number,
  inF: number,
  args: QuantArgs,
  dtype: ScaleDType,
  name: string,
  globalScale?: Float32Array,
): QuantizedWeight {
  const params = computeQParams(weight, out, inF, args, dtype, name, globalScale);
  return { args, out, inF, codes: quantizeWithParams(weight, out, inF, args, params), params };
}

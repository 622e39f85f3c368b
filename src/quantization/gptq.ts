import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { upperCholeskyOfInverse } from "../engine/linalg.js";
import { NumericalError } from "../errors.js";
import { QuantArgs } from "./scheme.js";
import { QParams, QuantizedWeight, ScaleDType, computeQParams, fakeQuantize, quantizeWithParams } from "./params.js";

export interface GptqOptions {
  /** fraction of mean(diag(H)) added to the diagonal (default 0.01) */
  dampening?: number;
  /** columns per block (default 128) */
  blockSize?: number;
}

export interface GptqResult {
  weight: QuantizedWeight;
  /** sum over rows of (w - q)^2 / Hinv_ii^2 / 2: GPTQ's own loss estimate */
  loss: number;
}

/** What GPTQ derives from a Hessian alone: shared by every Linear with the same H. */
export interface GptqPrep {
  inF: number;
  /** columns with H[i,i] == 0 (their weights are zeroed) */
  dead: Uint8Array;
  /** processing order of the columns */
  perm: Int32Array;
  /** upper Cholesky factor of inverse(damped permuted H), float32 [inF, inF] */
  Hinv: Float32Array;
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
  return { inF, dead, perm, Hinv };
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
  const { inF, dead, perm, Hinv } = prep;
  const params: QParams = computeQParams(weight, out, inF, args, dtype, name);
  const Wp = new Float32Array(out * inF);
  for (let r = 0; r < out; r++) {
    for (let c = 0; c < inF; c++) {
      const src = perm[c] as number;
      Wp[r * inF + c] = dead[src] ? 0 : (weight[r * inF + src] as number);
    }
  }
  const Q = new Float32Array(out * inF);
  let loss = 0;
  const zp = (gi: number): number => (params.zeroPoint ? (params.zeroPoint[gi] as number) : 0);
  for (let i1 = 0; i1 < inF; i1 += blockSize) {
    const i2 = Math.min(i1 + blockSize, inF);
    const count = i2 - i1;
    const Err = new Float32Array(out * count);
    for (let i = 0; i < count; i++) {
      const col = i1 + i;
      const d = Hinv[col * inF + col] as number;
      const group = Math.floor((perm[col] as number) / params.groupSize);
      const hrow = col * inF;
      for (let r = 0; r < out; r++) {
        const wrow = r * inF;
        const w = Wp[wrow + col] as number;
        const gi = r * params.groups + group;
        const q = fakeQuantize(w, args, params.scale[gi] as number, zp(gi));
        Q[wrow + col] = q;
        const err = Math.fround(Math.fround(w - q) / d);
        loss += ((w - q) * (w - q)) / (d * d) / 2;
        Err[r * count + i] = err;
        // W1[:, i:] -= err * Hinv1[i, i:]
        for (let j = col + 1; j < i2; j++) Wp[wrow + j] = Math.fround((Wp[wrow + j] as number) - Math.fround(err * (Hinv[hrow + j] as number)));
      }
    }
    if (i2 < inF) {
      // W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
      const rest = inF - i2;
      const Hblock = new Float32Array(count * rest);
      for (let i = 0; i < count; i++) Hblock.set(Hinv.subarray((i1 + i) * inF + i2, (i1 + i + 1) * inF), i * rest);
      const upd = await getEngine().matmul(new Tensor(Err, [out, count]), new Tensor(Hblock, [count, rest]));
      for (let r = 0; r < out; r++) {
        for (let j = 0; j < rest; j++) Wp[r * inF + i2 + j] = Math.fround((Wp[r * inF + i2 + j] as number) - (upd.data[r * rest + j] as number));
      }
    }
  }
  if (!Number.isFinite(loss)) throw new NumericalError(`${name}: GPTQ produced a non-finite error`);
  // back to the original column order; codes from the fake-quantized values with the same parameters
  const Wq = new Float32Array(out * inF);
  for (let r = 0; r < out; r++) for (let c = 0; c < inF; c++) Wq[r * inF + (perm[c] as number)] = Q[r * inF + c] as number;
  const codes = quantizeWithParams(Wq, out, inF, args, params);
  return { weight: { args, out, inF, codes, params }, loss };
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

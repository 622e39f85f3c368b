import { Tensor } from "./tensor.js";
import { InternalError } from "../errors.js";

/** Element-wise and row-wise operations in plain TypeScript (float32 storage, float64 arithmetic). */

export function sigmoidScalar(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

export function silu(x: Tensor): Tensor {
  const out = new Float32Array(x.size);
  const xd = x.data;
  for (let i = 0; i < out.length; i++) {
    const v = xd[i] as number;
    out[i] = v / (1 + Math.exp(-v));
  }
  return new Tensor(out, x.shape);
}

export function sigmoid(x: Tensor): Tensor {
  const out = new Float32Array(x.size);
  const xd = x.data;
  for (let i = 0; i < out.length; i++) out[i] = sigmoidScalar(xd[i] as number);
  return new Tensor(out, x.shape);
}

function sameShape(a: Tensor, b: Tensor, op: string): void {
  if (a.size !== b.size) throw new InternalError(`${op}: shapes [${a.shape.join(", ")}] and [${b.shape.join(", ")}] differ`);
}

/** a + b, into `into` when given (which may be a's or b's own array: each value is read before its sum is written). */
export function add(a: Tensor, b: Tensor, into?: Float32Array): Tensor {
  sameShape(a, b, "add");
  const out = into ?? new Float32Array(a.size);
  const [ad, bd] = [a.data, b.data];
  for (let i = 0; i < out.length; i++) out[i] = (ad[i] as number) + (bd[i] as number);
  return new Tensor(out, a.shape);
}

/** silu(gate) * up, fused; into `into` when given (gate.size floats). */
export function swiglu(gate: Tensor, up: Tensor, into?: Float32Array): Tensor {
  sameShape(gate, up, "swiglu");
  const out = into ?? new Float32Array(gate.size);
  const [gd, ud] = [gate.data, up.data];
  for (let i = 0; i < out.length; i++) {
    const g = gd[i] as number;
    out[i] = (g / (1 + Math.exp(-g))) * (ud[i] as number);
  }
  return new Tensor(out, gate.shape);
}

/** Softmax over the last dimension, in place on a float32 row buffer. */
export function softmaxRowInPlace(row: Float32Array, start: number, len: number): void {
  let max = -Infinity;
  for (let i = 0; i < len; i++) max = Math.max(max, row[start + i] as number);
  let sum = 0;
  for (let i = 0; i < len; i++) {
    const e = Math.exp((row[start + i] as number) - max);
    row[start + i] = e;
    sum += e;
  }
  for (let i = 0; i < len; i++) row[start + i] = (row[start + i] as number) / sum;
}

export function softmax(x: Tensor): Tensor {
  const out = new Float32Array(x.data);
  const n = x.dim(-1);
  for (let r = 0; r < out.length / n; r++) softmaxRowInPlace(out, r * n, n);
  return new Tensor(out, x.shape);
}

/**
 * Top-k over the last dimension, descending; equal values keep the lower index first.
 * Returns indices [rows, k].
 */
export function topkIndices(x: Tensor, k: number): Int32Array {
  const n = x.dim(-1);
  if (k > n) throw new InternalError(`topk: k=${k} exceeds dimension ${n}`);
  const rows = x.size / n;
  const out = new Int32Array(rows * k);
  const order = new Int32Array(n);
  const xd = x.data;
  for (let r = 0; r < rows; r++) {
    const base = r * n;
    for (let i = 0; i < n; i++) order[i] = i;
    // partial selection sort: k is small
    for (let j = 0; j < k; j++) {
      let best = j;
      for (let i = j + 1; i < n; i++) {
        const vi = xd[base + (order[i] as number)] as number;
        const vb = xd[base + (order[best] as number)] as number;
        if (vi > vb || (vi === vb && (order[i] as number) < (order[best] as number))) best = i;
      }
      const t = order[j] as number;
      order[j] = order[best] as number;
      order[best] = t;
      out[r * k + j] = order[j] as number;
    }
  }
  return out;
}

/** RMSNorm over the last dimension: x * rsqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Float32Array = new Float32Array(x.size)): Tensor {
  const n = weight.size;
  if (x.dim(-1) !== n) throw new InternalError(`rmsNorm: last dimension ${x.dim(-1)} != weight size ${n}`);
  // the arrays in locals, not read from the tensors on every element (docs/performance.md)
  const [xd, wd] = [x.data, weight.data];
  for (let base = 0; base < xd.length; base += n) {
    let ss = 0;
    for (let i = 0; i < n; i++) {
      const v = xd[base + i] as number;
      ss += v * v;
    }
    const inv = 1 / Math.sqrt(Math.fround(ss / n) + eps);
    for (let i = 0; i < n; i++) out[base + i] = Math.fround((xd[base + i] as number) * inv) * (wd[i] as number);
  }
  return new Tensor(out, x.shape);
}

/** Rows of x [T, H] at the given indices: [n, H], into `into` (n * H floats) when given. */
export function gatherRows(x: Tensor, rows: ArrayLike<number>, into?: Float32Array): Tensor {
  const h = x.dim(-1);
  const out = into ?? new Float32Array(rows.length * h);
  if (out.length !== rows.length * h) throw new InternalError(`gatherRows: ${out.length} floats given, ${rows.length * h} needed`);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as number;
    out.set(x.data.subarray(r * h, (r + 1) * h), i * h);
  }
  return new Tensor(out, [rows.length, h]);
}

/** target[rows[i]] += src[i] * weights[i] for src [n, H] (index_add_ with per-row weights). */
export function indexAddWeighted(target: Tensor, rows: ArrayLike<number>, src: Tensor, weights: ArrayLike<number>): void {
  const h = target.dim(-1);
  const [td, sd] = [target.data, src.data];
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as number;
    const w = weights[i] as number;
    for (let j = 0; j < h; j++) {
      const v = Math.fround((sd[i * h + j] as number) * w);
      td[r * h + j] = (td[r * h + j] as number) + v;
    }
  }
}

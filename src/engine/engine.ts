import type { Tensor } from "./tensor.js";
import { InternalError } from "../errors.js";

/**
 * The matrix products models and quantizers use, SwiGLU, RMSNorm, the sigmoid gate and an
 * attention head. Everything else (element-wise ops, top-k) is plain TypeScript in ops.ts.
 * `ReferenceEngine` is the living reference; `OrtEngine` is the fast path and is tested against it.
 */
export interface Engine {
  readonly name: string;
  /**
   * x [M, K] times w [N, K] transposed: [M, N] (a Linear layer without bias). `out`, when given,
   * receives the result (M * N floats): reusing a buffer avoids the page faults of a fresh one.
   */
  linear(x: Tensor, w: Tensor, out?: Float32Array): Promise<Tensor>;
  /** a [..., M, K] times b [..., K, N] with equal batch dimensions: [..., M, N], into `out` when given. */
  matmul(a: Tensor, b: Tensor, out?: Float32Array): Promise<Tensor>;
  /** x [M, K] transposed times x: [K, K], into `out` when given. */
  gram(x: Tensor, out?: Float32Array): Promise<Tensor>;
  /** c [M, N] -= a [M, K] times b [K, N], in place. */
  subtractProduct(c: Tensor, a: Tensor, b: Tensor): Promise<void>;
  /**
   * silu(gate) * up element-wise (the SwiGLU of an MLP), same shape; into `out` when given.
   * The one element-wise operation here: over every expert on every token it is as much work
   * as the exp of E * Im * T values, which onnxruntime's vectorised exp does far faster than plain TypeScript.
   */
  swiglu(gate: Tensor, up: Tensor, out?: Float32Array): Promise<Tensor>;
  /**
   * One SwiGLU expert's down_proj inputs and their statistics in one step (the all-experts
   * calibration pass runs it for every expert on every token): a = silu(x wGate^T) * (x wUp^T)
   * [M, I] into `out.act`, a^T a [I, I] into `out.gram` when given, and a times down^T
   * [M, H] (down [H, I]) into `out.down.out` when given (a whole SwiGLU MLP); with `out.addGram`,
   * a^T a is added to `out.gram` instead (a running sum over calls, kept inside the engine). Returns a.
   */
  swigluExpert(x: Tensor, wGate: Tensor, wUp: Tensor, out: SwigluExpertOut): Promise<Tensor>;
  /**
   * RMSNorm over the last dimension: x * rsqrt(mean(x^2) + eps) * weight (weight [n], x [..., n]),
   * same shape; into `out` when given.
   */
  rmsNorm(x: Tensor, weight: Tensor, eps: number, out?: Float32Array): Promise<Tensor>;
  /** x * sigmoid(gate) element-wise (an attention output gate), x's shape; into `out` when given. */
  sigmoidGate(x: Tensor, gate: Tensor, out?: Float32Array): Promise<Tensor>;
  /**
   * One attention head: softmax(q k^T * scale + mask) v, rows of q [M, D] against keys k [S, D]
   * and values v [S, Dv]; `mask` [M, S] is added to the scores (0 for a visible key, -Infinity for
   * a hidden one; every row sees at least one key). [M, Dv], into `out` when given.
   */
  attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number, out?: Float32Array): Promise<Tensor>;
}

/** Where `swigluExpert` writes (see there). */
export interface SwigluExpertOut {
  act: Float32Array;
  gram?: Float32Array;
  /** add a^T a to `gram` (float32, one row chunk at a time) instead of writing it */
  addGram?: boolean;
  down?: { weight: Tensor; out: Float32Array };
}

export interface MatmulShape {
  batch: number[];
  m: number;
  k: number;
  n: number;
}

export function checkLinear(x: Tensor, w: Tensor): { m: number; k: number; n: number } {
  if (x.shape.length !== 2 || w.shape.length !== 2 || x.dim(1) !== w.dim(1)) {
    throw new InternalError(`linear: x [${x.shape.join(", ")}] and weight [${w.shape.join(", ")}] do not fit`);
  }
  return { m: x.dim(0), k: x.dim(1), n: w.dim(0) };
}

export function checkMatmul(a: Tensor, b: Tensor): MatmulShape {
  const ra = a.shape.length;
  const rb = b.shape.length;
  const batch = a.shape.slice(0, ra - 2);
  const same = ra === rb && ra >= 2 && batch.every((d, i) => d === b.shape[i]) && a.dim(-1) === b.dim(-2);
  if (!same) throw new InternalError(`matmul: [${a.shape.join(", ")}] and [${b.shape.join(", ")}] do not fit`);
  return { batch, m: a.dim(-2), k: a.dim(-1), n: b.dim(-1) };
}

export function checkGram(x: Tensor): { m: number; k: number } {
  if (x.shape.length !== 2) throw new InternalError(`gram: expected a 2-D input, got [${x.shape.join(", ")}]`);
  return { m: x.dim(0), k: x.dim(1) };
}

/** The caller's output buffer (checked for size) or a new one. */
export function checkOut(out: Float32Array | undefined, size: number): Float32Array {
  if (!out) return new Float32Array(size);
  if (out.length !== size) throw new InternalError(`output buffer has ${out.length} floats, the result needs ${size}`);
  return out;
}

export function checkSwigluExpert(x: Tensor, wGate: Tensor, wUp: Tensor, out: SwigluExpertOut): { m: number; i: number } {
  const { m, n } = checkLinear(x, wGate);
  checkLinear(x, wUp);
  if (wUp.dim(0) !== n) throw new InternalError(`swigluExpert: gate [${wGate.shape.join(", ")}] and up [${wUp.shape.join(", ")}] differ`);
  checkOut(out.act, m * n);
  if (out.gram) checkOut(out.gram, n * n);
  const d = out.down?.weight;
  if (d && (d.shape.length !== 2 || d.dim(1) !== n))
    throw new InternalError(`swigluExpert: down [${d.shape.join(", ")}] does not take ${n} inputs`);
  if (d) checkOut(out.down?.out, m * d.dim(0));
  return { m, i: n };
}

/** The norm's width (x's last dimension, the weight's size). */
export function checkRmsNorm(x: Tensor, weight: Tensor): number {
  const n = weight.size;
  if (x.shape.length === 0 || x.dim(-1) !== n)
    throw new InternalError(`rmsNorm: last dimension of [${x.shape.join(", ")}] != weight size ${n}`);
  return n;
}

export function checkSwiglu(gate: Tensor, up: Tensor): number {
  if (gate.size !== up.size)
    throw new InternalError(`swiglu: gate [${gate.shape.join(", ")}] and up [${up.shape.join(", ")}] differ in size`);
  return gate.size;
}

export function checkAttention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor): { m: number; s: number; dv: number } {
  const ok =
    q.shape.length === 2 &&
    k.shape.length === 2 &&
    v.shape.length === 2 &&
    q.dim(1) === k.dim(1) &&
    v.dim(0) === k.dim(0) &&
    mask.size === q.dim(0) * k.dim(0);
  if (!ok)
    throw new InternalError(
      `attention: q [${q.shape.join(", ")}], k [${k.shape.join(", ")}], v [${v.shape.join(", ")}] and mask [${mask.shape.join(", ")}] do not fit`,
    );
  return { m: q.dim(0), s: k.dim(0), dv: v.dim(1) };
}

export function checkSigmoidGate(x: Tensor, gate: Tensor): number {
  if (x.size !== gate.size)
    throw new InternalError(`sigmoidGate: x [${x.shape.join(", ")}] and gate [${gate.shape.join(", ")}] differ in size`);
  return x.size;
}

export function checkSubtractProduct(c: Tensor, a: Tensor, b: Tensor): { m: number; k: number; n: number } {
  const { batch, m, k, n } = checkMatmul(a, b);
  if (batch.length !== 0 || c.shape.length !== 2 || c.dim(0) !== m || c.dim(1) !== n) {
    throw new InternalError(
      `subtractProduct: c [${c.shape.join(", ")}] does not fit a [${a.shape.join(", ")}] x b [${b.shape.join(", ")}]`,
    );
  }
  return { m, k, n };
}

/** The attention core shared by every family: causal (optionally windowed) grouped-query softmax attention. */
import { getEngine } from "../engine/index.js";
import { applyRopeInPlace } from "./rope.js";
import { Tensor, numel } from "../engine/tensor.js";
import { withFloats } from "../engine/scratch.js";
import { Linear, RMSNorm } from "./layers.js";
import { Module } from "./module.js";

/** [B, S, heads, D] (token-major) to [B * heads, S, D] (head-major), into `into` when given. */
export function toHeads(x: Float32Array, B: number, S: number, heads: number, D: number, into?: Float32Array): Float32Array {
  const out = into ?? new Float32Array(B * heads * S * D);
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < S; s++) {
      for (let h = 0; h < heads; h++) {
        const src = ((b * S + s) * heads + h) * D;
        out.set(x.subarray(src, src + D), ((b * heads + h) * S + s) * D);
      }
    }
  }
  return out;
}

/** [B * heads, S, D] (head-major) back to [B, S, heads * D] (token-major), into `into` when given. */
export function fromHeads(x: Float32Array, B: number, S: number, heads: number, D: number, into?: Float32Array): Float32Array {
  const out = into ?? new Float32Array(B * S * heads * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < heads; h++) {
      for (let s = 0; s < S; s++) {
        const src = ((b * heads + h) * S + s) * D;
        out.set(x.subarray(src, src + D), ((b * S + s) * heads + h) * D);
      }
    }
  }
  return out;
}

/**
 * A token mixer that says how much floating-point work it does beyond its Linear layers, for the
 * plan: softmax attention's scores and values grow with the (query, key) pairs it scores
 * (attentionPairs), a linear-attention recurrence with each sequence's length.
 */
export interface TokenMixer {
  /** work for sequences of these lengths */
  mixingFlops(lengths: readonly number[]): number;
}

/** `m` as a TokenMixer, or null. */
export function asTokenMixer(m: unknown): TokenMixer | null {
  return typeof (m as Partial<TokenMixer>).mixingFlops === "function" ? (m as TokenMixer) : null;
}

export interface AttentionShape {
  B: number;
  S: number;
  nH: number;
  nKV: number;
  D: number;
  /** keys at or before i - window are hidden from query i; null: plain causal */
  window: number | null;
  /** value head dim, when it differs from the query/key dim D (multi-head latent attention) */
  Dv?: number;
  /** the factor on q.k (default D^-0.5) */
  scale?: number;
}

/**
 * softmax(q k^T * scale) v per head (scale D^-0.5 unless given), causal, with query head h reading
 * key/value head floor(h / group), group = nH / nKV. Inputs and output are head-major by key/value
 * head: q [B * nKV, S, group, D] (toHeads(q, B, S, nKV, group * D) of token-major q), k
 * [B * nKV, S, D], v [B * nKV, S, Dv], the output like q [B * nKV, S, group, Dv] (into `into` when
 * given). The query heads of a group go through together, and in blocks of rows, each against
 * only the keys some row of it sees (causalBlocks): the scores a mask would hide are not computed.
 */
export async function causalAttention(
  qh: Float32Array,
  kh: Float32Array,
  vh: Float32Array,
  a: AttentionShape,
  into?: Float32Array,
): Promise<Float32Array> {
  const { B, S, nH, nKV, D, window } = a;
  const Dv = a.Dv ?? D;
  const engine = getEngine();
  const group = nH / nKV;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const ctx = into ?? new Float32Array(B * nH * S * Dv);
  for (const { r0, r1, k0 } of causalBlocks(S, window)) {
    const rows = (r1 - r0) * group;
    // the block's mask (the same for every key/value head) in scratch memory
    await withFloats([rows * (r1 - k0)] as const, async ([m]) => {
      const mask = new Tensor(maskRows(window, group, r0, r1, k0, m), [rows, r1 - k0]);
      for (let kv = 0; kv < B * nKV; kv++) {
        const at = (x: Float32Array, d: number, from: number): Float32Array => x.subarray((kv * S + from) * d, (kv * S + r1) * d);
        const [q, k, v] = [
          new Tensor(at(qh, group * D, r0), [rows, D]),
          new Tensor(at(kh, D, k0), [r1 - k0, D]),
          new Tensor(at(vh, Dv, k0), [r1 - k0, Dv]),
        ];
        await engine.attention(q, k, v, mask, scale, at(ctx, group * Dv, r0));
      }
    });
  }
  return ctx;
}

/**
 * causalAttention of token-major q, k, v ([B, S, heads * D]) through their head-major copies (in
 * `into` when given), into its `ctx`; tokenMajorContext makes it token-major again.
 */
export async function attendTokenMajor(
  t: { q: Float32Array; k: Float32Array; v: Float32Array },
  a: AttentionShape,
  into: Partial<{ qh: Float32Array; kh: Float32Array; vh: Float32Array; ctx: Float32Array }> = {},
): Promise<Float32Array> {
  const { B, S, nH, nKV, D } = a;
  const [qh, kh, vh] = [
    toHeads(t.q, B, S, nKV, (nH / nKV) * D, into.qh),
    toHeads(t.k, B, S, nKV, D, into.kh),
    toHeads(t.v, B, S, nKV, a.Dv ?? D, into.vh),
  ];
  return causalAttention(qh, kh, vh, a, into.ctx);
}

/** causalAttention's output [B * nKV, S, group, Dv] token-major: [B, S, nH * Dv], into `into` when given. */
export function tokenMajorContext(ctx: Float32Array, a: AttentionShape, into?: Float32Array): Float32Array {
  return fromHeads(ctx, a.B, a.S, a.nKV, (a.nH / a.nKV) * (a.Dv ?? a.D), into);
}

/** [S, S]: 0 where query i sees key j (j <= i, and j > i - window with a window), else -Infinity. */
export function causalMask(S: number, window: number | null): Tensor {
  return new Tensor(maskRows(window, 1, 0, S, 0, new Float32Array(S * S)), [S, S]);
}

/** Query tokens per attention call of causalAttention (times the query heads of a group). */
export const ATTENTION_ROWS = 64;

/**
 * The query tokens of a causal (windowed) attention over S tokens in blocks of ATTENTION_ROWS:
 * tokens [r0, r1) see keys [k0, r1) at most (k0: the window's start for token r0, 0 without a
 * window); the keys before k0 are hidden from every token of the block.
 */
export function causalBlocks(S: number, window: number | null): { r0: number; r1: number; k0: number }[] {
  const blocks: { r0: number; r1: number; k0: number }[] = [];
  for (let r0 = 0; r0 < S; r0 += ATTENTION_ROWS)
    blocks.push({ r0, r1: Math.min(S, r0 + ATTENTION_ROWS), k0: window === null ? 0 : Math.max(0, r0 - window + 1) });
  return blocks;
}

/** The (query, key) pairs causalAttention scores over a sequence of S tokens: each block's rows against the keys [k0, r1). */
export function attentionPairs(S: number, window: number | null): number {
  return causalBlocks(S, window).reduce((a, { r0, r1, k0 }) => a + (r1 - r0) * (r1 - k0), 0);
}

/** attentionPairs over sequences of these lengths. */
export function sumPairs(lengths: readonly number[], window: number | null): number {
  return lengths.reduce((a, S) => a + attentionPairs(S, window), 0);
}

/** causalMask's rows [r0, r1), each `group` times, and its columns [k0, r1): [(r1 - r0) * group, r1 - k0] into `m`. */
function maskRows(window: number | null, group: number, r0: number, r1: number, k0: number, m: Float32Array): Float32Array {
  const n = r1 - k0;
  m.fill(Number.NEGATIVE_INFINITY, 0, (r1 - r0) * group * n);
  for (let i = r0; i < r1; i++) {
    const from = window === null ? 0 : Math.max(0, i - window + 1);
    for (let g = 0; g < group; g++) {
      const row = ((i - r0) * group + g) * n;
      m.fill(0, row + from - k0, row + i - k0 + 1);
    }
  }
  return m;
}

export interface RopeAttentionOptions {
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ropeTheta: number;
  /** per-head RMSNorm of q and k before RoPE (`q_norm`, `k_norm`), with this eps; null: none */
  qkNormEps: number | null;
  /** the q/k norms run over all heads at once (weights [heads * D]; MiniMax-M2), not per head */
  qkNormAllHeads?: boolean;
  window: number | null;
  /** RoPE over the first `rotaryDim` dims of each head only (partial rotary); default all */
  rotaryDim?: number;
  /** biases on q_proj, k_proj and v_proj (never on o_proj) */
  qkvBias?: boolean;
}

/**
 * Llama-style grouped-query attention under Hugging Face's names (`q_proj`, `k_proj`, `v_proj`,
 * `o_proj`, optionally `q_norm` / `k_norm`): RoPE (rotate-half, over all head dims or the first
 * `rotaryDim`) on q and k of every layer, causal softmax attention; biases on q/k/v only if asked.
 */
export class RopeAttention extends Module<Tensor, Tensor> implements TokenMixer {
  readonly className: string = "RopeAttention";

  constructor(readonly opts: RopeAttentionOptions) {
    super();
    const { hidden: H, heads: nH, kvHeads: nKV, headDim: D } = opts;
    const bias = { bias: opts.qkvBias ?? false };
    this.addModule("q_proj", new Linear(H, nH * D, bias));
    this.addModule("k_proj", new Linear(H, nKV * D, bias));
    this.addModule("v_proj", new Linear(H, nKV * D, bias));
    this.addModule("o_proj", new Linear(nH * D, H));
    if (opts.qkNormEps !== null) {
      const all = opts.qkNormAllHeads ?? false;
      this.addModule("q_norm", new RMSNorm(all ? nH * D : D, opts.qkNormEps));
      this.addModule("k_norm", new RMSNorm(all ? nKV * D : D, opts.qkNormEps));
    }
  }

  /** q k^T and p v: 4 D per head and (query, key) pair scored */
  mixingFlops(lengths: readonly number[]): number {
    return 4 * this.opts.heads * this.opts.headDim * sumPairs(lengths, this.opts.window);
  }

  async forward(x: Tensor): Promise<Tensor> {
    const { heads: nH, kvHeads: nKV, headDim: D, qkNormEps: eps } = this.opts;
    const [B, S] = [x.dim(0), x.dim(1)];
    const lin = (n: string): Linear => this.child(n);
    const [nq, nk] = [B * S * nH * D, B * S * nKV * D];
    // the projections, q and k after their norms, the head-major copies and the context are used only here: scratch memory
    return withFloats([nq, nk, nk, nq, nk, nq, nk, nk, nq] as const, async ([qp, kp, vp, qn, kn, qh, kh, vh, ctx]) => {
      // per head: rows of D; over all heads: one row of heads * D per token
      const norm = async (t: Tensor, heads: number, n: string, into: Float32Array | undefined): Promise<Tensor> => {
        if (eps === null) return t;
        const width = this.opts.qkNormAllHeads ? heads * D : D;
        return getEngine().rmsNorm(t.reshape([t.size / width, width]), this.child<RMSNorm>(n).param("weight"), eps, into);
      };
      const q = await norm(await lin("q_proj").callInto(x, qp), nH, "q_norm", qn);
      const k = await norm(await lin("k_proj").callInto(x, kp), nKV, "k_norm", kn);
      const v = await lin("v_proj").callInto(x, vp);
      // rotated in place: the norms' scratch outputs, the projections' scratch, or (a forward hook on them) their fresh arrays
      const R = this.opts.rotaryDim ?? D;
      applyRopeInPlace(q.data, B, S, nH, D, this.opts.ropeTheta, R);
      applyRopeInPlace(k.data, B, S, nKV, D, this.opts.ropeTheta, R);
      const shape = { B, S, nH, nKV, D, window: this.opts.window };
      await attendTokenMajor({ q: q.data, k: k.data, v: v.data }, shape, { qh, kh, vh, ctx });
      return callOnFilled(lin("o_proj"), [B, S, nH * D], async (into) => tokenMajorContext(ctx, shape, into));
    });
  }
}

/**
 * `next` called on the input [shape] that `fill` writes into the array it is given: scratch memory
 * while nothing hooks `next`, which then reads its input only during the call; a fresh array (fill
 * is given none) when something does, as a hook may keep its input.
 */
export async function callOnFilled(
  next: Linear,
  shape: number[],
  fill: (into: Float32Array | undefined) => Promise<Float32Array>,
): Promise<Tensor> {
  if (next.hookCount > 0) return next.call(new Tensor(await fill(undefined), shape));
  return withFloats([numel(shape)] as const, async ([buf]) => next.call(new Tensor(await fill(buf), shape)));
}

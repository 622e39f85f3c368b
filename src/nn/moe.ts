/**
 * The view of an MoE block that calibration tooling needs, whatever a family calls its parts:
 * its routed experts (each a gate, an up and a down projection, under any on-disk names) and the
 * routing decisions of its router (the experts each token was sent to).
 */
import { Tensor } from "../engine/tensor.js";
import { gatherRows, indexAddWeighted, softmaxRowInPlace, topkIndices } from "../engine/ops.js";
import { withFloats } from "../engine/scratch.js";
import type { Linear } from "./layers.js";
import type { AnyModule, Module } from "./module.js";

export interface MoeExpert {
  readonly gate: Linear;
  readonly up: Linear;
  readonly down: Linear;
}

export interface MoeRouting {
  /** [T, K] expert indices, best first */
  readonly selectedExperts: Int32Array;
}

export interface MoeBlock {
  readonly numRoutedExperts: number;
  /** Call `observe` with every routing decision the block's router makes (a hook on the router; returns its remover). */
  onRouting(observe: (routing: MoeRouting) => void): () => void;
  routedExperts(): readonly MoeExpert[];
}

/** `m` seen as an MoE block, or null when it is none. */
export function asMoeBlock(m: AnyModule): (AnyModule & MoeBlock) | null {
  return typeof (m as Partial<MoeBlock>).routedExperts === "function" && typeof (m as Partial<MoeBlock>).onRouting === "function"
    ? (m as AnyModule & MoeBlock)
    : null;
}

/**
 * An expert that can write its output into the caller's memory; null when it must be called as a
 * module instead (something hooks it, and a hook may keep its input).
 */
export interface IntoExpert {
  forwardInto(x: Tensor, out: Float32Array): Promise<Tensor | null>;
}

/** The (slot, token) pairs routed to one expert. */
export interface RoutedPairs {
  tokens: Int32Array;
  slots: Int32Array;
}

/**
 * For experts first, first + 1, ..., first + count - 1: the (slot, token) pairs that selected each,
 * slot-major then token order (torch.where over the [K, T] one-hot mask, as the seed does), in one
 * pass over `selected` for all of them.
 */
export function routedPairsOf(selected: Int32Array, T: number, K: number, first: number, count: number): RoutedPairs[] {
  const n = new Int32Array(count);
  for (let i = 0; i < T * K; i++) {
    const e = (selected[i] as number) - first;
    if (e >= 0 && e < count) n[e] = (n[e] as number) + 1;
  }
  const pairs = Array.from(n, (c) => ({ tokens: new Int32Array(c), slots: new Int32Array(c) }));
  const at = new Int32Array(count);
  for (let k = 0; k < K; k++) {
    for (let t = 0; t < T; t++) {
      const e = (selected[t * K + k] as number) - first;
      if (e < 0 || e >= count) continue;
      const p = pairs[e] as RoutedPairs;
      const j = at[e] as number;
      p.tokens[j] = t;
      p.slots[j] = k;
      at[e] = j + 1;
    }
  }
  return pairs;
}

export function routeWeights(topScores: Tensor, tokens: Int32Array, slots: Int32Array): Float32Array {
  const K = topScores.dim(1);
  return Float32Array.from(tokens, (t, i) => topScores.data[t * K + (slots[i] as number)] as number);
}

export interface SoftmaxRouting extends MoeRouting {
  /** [T, K] combine weights of the selected experts (renormalised when norm_topk_prob) */
  readonly topScores: Tensor;
}

/** softmax over all experts in float32, top-K descending, renormalised to sum 1 when `normalize`. */
export function softmaxTopK(logits: Tensor, K: number, normalize: boolean): SoftmaxRouting {
  const [T, E] = [logits.dim(0), logits.dim(1)];
  const probs = new Float32Array(logits.data);
  for (let t = 0; t < T; t++) softmaxRowInPlace(probs, t * E, E);
  const selectedExperts = topkIndices(new Tensor(probs, [T, E]), K);
  const top = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    let sum = 0;
    for (let k = 0; k < K; k++) {
      const p = probs[t * E + (selectedExperts[t * K + k] as number)] as number;
      top[t * K + k] = p;
      sum += p;
    }
    if (normalize) for (let k = 0; k < K; k++) top[t * K + k] = Math.fround((top[t * K + k] as number) / sum);
  }
  return { topScores: new Tensor(top, [T, K]), selectedExperts };
}

/** What an MoE block's routed step is given: its input tokens and the router's decisions. */
export interface RoutedInput {
  /** [T, H] the block's input tokens */
  readonly flat: Tensor;
  /** [T, K] combine weights of the selected experts */
  readonly topScores: Tensor;
  /** [T, K] selected expert indices */
  readonly selectedExperts: Int32Array;
}

/**
 * Replaces the routed-expert step of every MoE block called while it is set (served and
 * calibration blocks alike): `routed` [T, H] arrives zero and holds the routed sum when it returns.
 * The expert-group executor uses it to stream a block's input out and its routed sum back in.
 */
export type RoutedOverride = (input: RoutedInput, routed: Tensor) => Promise<void>;

let override: RoutedOverride | null = null;

/** Run `fn` with every MoE block's routed step replaced by `o`. */
export async function withRoutedOverride<T>(o: RoutedOverride, fn: () => Promise<T>): Promise<T> {
  const previous = override;
  override = o;
  try {
    return await fn();
  } finally {
    override = previous;
  }
}

/** The override in force, if any (calibration modules check it too). */
export function routedOverride(): RoutedOverride | null {
  return override;
}

/** The served routed step of a block: each expert on its routed tokens, or the override in force. */
export async function addServedExperts(input: RoutedInput, experts: readonly Module<Tensor, Tensor>[], routed: Tensor): Promise<void> {
  if (override) return override(input, routed);
  await servedExperts(input, experts, 0, routed);
}

/**
 * What servedExperts adds, as rows: experts `first`, `first + 1`, ... each on its routed tokens, each
 * pair's weighted output (its slot-major pairs, expert after expert). A group's share of the routed
 * sum, computed where its weights are; addRoutedRows adds it elsewhere, bit for bit servedExperts' sum.
 */
export async function routedRows(input: RoutedInput, experts: readonly Module<Tensor, Tensor>[], first: number): Promise<Tensor> {
  const [T, H] = [input.flat.dim(0), input.flat.dim(1)];
  const K = input.topScores.dim(1);
  const parts: Float32Array[] = [];
  const pairs = routedPairsOf(input.selectedExperts, T, K, first, experts.length);
  for (const [i, expert] of experts.entries()) {
    const { tokens, slots } = pairs[i] as RoutedPairs;
    if (tokens.length === 0) continue;
    const y = (await expert.call(gatherRows(input.flat, tokens))).data;
    const w = routeWeights(input.topScores, tokens, slots);
    const v = new Float32Array(tokens.length * H);
    for (let r = 0; r < tokens.length; r++) {
      const wr = w[r] as number;
      for (let j = 0; j < H; j++) v[r * H + j] = Math.fround((y[r * H + j] as number) * wr);
    }
    parts.push(v);
  }
  const out = new Float32Array(parts.reduce((a, v) => a + v.length, 0));
  let at = 0;
  for (const v of parts) {
    out.set(v, at);
    at += v.length;
  }
  return new Tensor(out, [out.length / H, H]);
}

/** Add `rows` (routedRows of `count` experts from `first`) into `routed`, in servedExperts' order; false when their number does not match the call's. */
export function addRoutedRows(input: RoutedInput, count: number, first: number, routed: Tensor, rows: Tensor): boolean {
  const [T, H] = [input.flat.dim(0), input.flat.dim(1)];
  const K = input.topScores.dim(1);
  const pairs = routedPairsOf(input.selectedExperts, T, K, first, count).map((p) => p.tokens);
  if (rows.dim(1) !== H || pairs.reduce((a, t) => a + t.length, 0) !== rows.dim(0)) return false;
  const [dst, src] = [routed.data, rows.data];
  let at = 0;
  for (const tokens of pairs)
    for (const t of tokens) {
      for (let j = 0; j < H; j++) dst[t * H + j] = (dst[t * H + j] as number) + (src[at * H + j] as number);
      at++;
    }
  return true;
}

/**
 * Experts `first`, `first + 1`, ... (the block's indices) each on its routed tokens, their weighted
 * outputs added into `routed` in expert order (pairs slot-major): the one order of the routed sum,
 * whether a layer runs whole or one expert group at a time.
 */
export async function servedExperts(
  input: RoutedInput,
  experts: readonly Module<Tensor, Tensor>[],
  first: number,
  routed: Tensor,
): Promise<void> {
  const [T, H] = [input.flat.dim(0), input.flat.dim(1)];
  const K = input.topScores.dim(1);
  const pairs = routedPairsOf(input.selectedExperts, T, K, first, experts.length);
  for (const [i, expert] of experts.entries()) {
    const { tokens, slots } = pairs[i] as RoutedPairs;
    if (tokens.length === 0) continue;
    const weights = routeWeights(input.topScores, tokens, slots);
    const into = (expert as Partial<IntoExpert>).forwardInto?.bind(expert);
    if (!into) {
      indexAddWeighted(routed, tokens, await expert.call(gatherRows(input.flat, tokens)), weights);
      continue;
    }
    // an expert that writes into given memory: its rows and output in scratch memory, reused expert after expert
    await withFloats([tokens.length * H, tokens.length * routed.dim(1)] as const, async ([rows, out]) => {
      const x = gatherRows(input.flat, tokens, rows);
      indexAddWeighted(routed, tokens, (await into(x, out)) ?? (await expert.call(new Tensor(new Float32Array(rows), x.shape))), weights);
    });
  }
}

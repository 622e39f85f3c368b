/**
 * The routed-expert step of every MoE calibration module, whatever the family: with
 * `calibrateAllExperts` every expert runs on all T tokens (so each expert Linear sees the whole
 * calibration set) and only its routed rows, weighted by the router, are added; without it each
 * expert runs on its routed tokens only (and is still called, with an empty batch, when it has
 * none). When nothing but moecal's own observers watches the experts, the all-experts case takes
 * the fast path (one shared Gram product for every gate/up projection).
 */
import type { Tensor } from "../engine/tensor.js";
import { gatherRows, indexAddWeighted } from "../engine/ops.js";
import type { Module } from "../nn/module.js";
import { type RoutedPairs, routeWeights, routedOverride, routedPairsOf } from "../nn/moe.js";
import { type FastState, type SwiGluExpert, allExpertsFast, fastPlan } from "./fast-path.js";
import { withRowRouting } from "./expert-statistics.js";

export interface RoutedStep {
  /** [T, H] the block's input tokens */
  flat: Tensor;
  /** [T, K] combine weights of the selected experts */
  topScores: Tensor;
  /** [T, K] selected expert indices */
  selectedExperts: Int32Array;
  experts: readonly (SwiGluExpert & Module<Tensor, Tensor>)[];
  /** the block's index of `experts[0]` (a group of a layer's experts; 0 for all of them) */
  first?: number;
  calibrateAllExperts: boolean;
  fastPath: boolean;
  fastState: FastState;
}

let statisticsOnly = false;

/**
 * Run `fn` with the routed sums of MoE calibration modules left out (they stay zero): for a pass
 * that only takes statistics and discards the layer's output (a later pass through the quantized
 * layer makes the next layer's inputs), so the routed down_proj products are not computed.
 */
export async function withoutRoutedSums<T>(fn: () => Promise<T>): Promise<T> {
  const previous = statisticsOnly;
  statisticsOnly = true;
  try {
    return await fn();
  } finally {
    statisticsOnly = previous;
  }
}

/** Add every expert's weighted routed rows into `routed` [T, H], experts in order, pairs slot-major (the seed's order), or run the override in force (nn/moe.ts). */
export async function addRoutedExperts(s: RoutedStep, routed: Tensor): Promise<void> {
  const o = routedOverride();
  if (o) return o(s, routed);
  await calibrateExperts(s, statisticsOnly ? null : routed);
}

/**
 * The routed step of calibration itself: the experts of `s` (a whole block's, or a group of them)
 * on their tokens, statistics observed; their weighted routed rows added into `routed` unless it is null.
 */
export async function calibrateExperts(s: RoutedStep, routed: Tensor | null): Promise<void> {
  const first = s.first ?? 0;
  const T = s.flat.dim(0);
  const K = s.topScores.dim(1);
  const plan = s.calibrateAllExperts && s.fastPath ? fastPlan(s.experts) : null;
  if (plan) {
    await allExpertsFast(s, plan, routed);
    return;
  }
  const pairs = routedPairsOf(s.selectedExperts, T, K, first, s.experts.length);
  for (const [e, expert] of s.experts.entries()) {
    const { tokens, slots } = pairs[e] as RoutedPairs;
    const weights = routeWeights(s.topScores, tokens, slots);
    // observers of the expert's Linears learn which of its input rows are routed to it
    const out = s.calibrateAllExperts
      ? gatherRows(await withRowRouting({ rows: tokens, weights }, () => expert.call(s.flat)), tokens)
      : await withRowRouting({ rows: Int32Array.from(tokens, (_, i) => i), weights }, () => expert.call(gatherRows(s.flat, tokens)));
    if (routed && tokens.length > 0) indexAddWeighted(routed, tokens, out, weights);
  }
}

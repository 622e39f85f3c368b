import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { withFloats } from "../engine/scratch.js";
import { gatherRows, indexAddWeighted } from "../engine/ops.js";
import type { AnyModule } from "../nn/module.js";
import { type MoeExpert, type RoutedPairs, routeWeights, routedPairsOf } from "../nn/moe.js";
import { type FastPathObserver, fastObserversOf } from "./fast-observers.js";
import { RoutedGram, type RoutedWeight } from "./expert-statistics.js";
import { GramAccumulator } from "./gram.js";
import { InternalError } from "../errors.js";

/** A routed expert as the fast path computes it: down(silu(gate(x)) * up(x)), a module whose hooks it must respect. */
export type SwiGluExpert = MoeExpert & Pick<AnyModule, "hookCount">;

/** Tokens per chunk of the all-experts fast path. */
const FAST_TOKENS_PER_CHUNK = 2048;

/** What the fast path needs: each expert's Linears and the observers it must feed instead of hooks. */
export interface FastPlan {
  /** per expert: the observers of its gate and up projections */
  gateUp: FastPathObserver[][];
  /** per expert: the observers of its down projection */
  down: FastPathObserver[][];
  /** the routed weight when an observer keeps routed rows apart (router-aware statistics) */
  routedWeight: RoutedWeight | null;
}

/**
 * The fast path applies when nothing but fast-path-aware observers watches the experts
 * (a user's own hook on an expert or one of its Linears needs the per-expert path).
 */
export function fastPlan(experts: readonly SwiGluExpert[]): FastPlan | null {
  const gateUp: FastPathObserver[][] = [];
  const down: FastPathObserver[][] = [];
  for (const e of experts) {
    if (e.hookCount > 0) return null;
    const g = fastObserversOf(e.gate);
    const u = fastObserversOf(e.up);
    const d = fastObserversOf(e.down);
    if (!g || !u || !d) return null;
    gateUp.push([...g, ...u]);
    down.push(d);
  }
  const weights = new Set([...gateUp.flat(), ...down.flat()].map((o) => o.routedWeight).filter((w) => w !== null));
  if (weights.size > 1) throw new InternalError(`observers of one MoE block disagree on the routed weight (${[...weights].join(", ")})`);
  return { gateUp, down, routedWeight: [...weights][0] ?? null };
}

/** Per calibration module: the input statistics shared by every gate/up projection. */
export interface FastState {
  sharedGateUp: GramAccumulator | null;
  /**
   * the shared gate/up statistics are complete (every call seen): later experts share them without
   * adding to them (the groups of a layer run in expert groups, after the first)
   */
  gateUpComplete: boolean;
  /** per expert, router-aware statistics only: the routed rows of gate/up (shared by both) and of down */
  routed: { gateUp: RoutedGram; down: RoutedGram }[] | null;
  /** per expert: the Gram sum of its down_proj inputs, added to inside the engine, shared by the observers that want it */
  down: GramAccumulator[] | null;
}

/** A fresh per-block state. */
export function newFastState(): FastState {
  return { sharedGateUp: null, gateUpComplete: false, routed: null, down: null };
}

/**
 * All experts on all tokens, fast: per chunk of tokens, ONE Gram product of the chunk for all
 * gate/up Hessians (their inputs are the same tokens); per expert, one engine step for its gate
 * and up products [Tc, H] x [H, Im] (token-major: docs/performance.md), SwiGLU and the Gram
 * product of the result for down_proj (its inputs differ); down_proj outputs only for the
 * routed rows. Adds the weighted routed outputs into `routed` in the seed's order (experts in
 * order, slot-major pairs); with `routed` null, only the statistics (no down_proj products).
 */
export async function allExpertsFast(
  s: {
    flat: Tensor;
    topScores: Tensor;
    selectedExperts: Int32Array;
    experts: readonly SwiGluExpert[];
    first?: number;
    fastState: FastState;
  },
  plan: FastPlan,
  routed: Tensor | null,
): Promise<void> {
  const { flat, topScores, selectedExperts: selected, experts, fastState: state } = s;
  const first = s.first ?? 0;
  const engine = getEngine();
  const [T, H] = [flat.dim(0), flat.dim(1)];
  const K = topScores.dim(1);
  const E = experts.length;
  const Im = (experts[0] as SwiGluExpert).gate.outFeatures;
  const gateUpObservers = plan.gateUp.flat();
  const wantShared = gateUpObservers.some((o) => o.wantsGram);
  if (wantShared && !state.sharedGateUp) state.sharedGateUp = new GramAccumulator(H);
  if (state.sharedGateUp) for (const o of gateUpObservers) o.shareWith(state.sharedGateUp);
  const rw = plan.routedWeight;
  if (rw && !state.routed)
    state.routed = experts.map((ex) => ({ gateUp: new RoutedGram(H, rw), down: new RoutedGram(ex.down.inFeatures, rw) }));
  const routedGrams = rw ? state.routed : null;
  state.down ??= experts.map((ex) => new GramAccumulator(ex.down.inFeatures));
  const downSums = state.down;
  for (let e = 0; e < E; e++)
    for (const o of plan.down[e] as FastPathObserver[]) if (o.wantsGram) o.shareWith(downSums[e] as GramAccumulator);
  if (routedGrams)
    for (let e = 0; e < E; e++) {
      const r = routedGrams[e] as { gateUp: RoutedGram; down: RoutedGram };
      for (const o of plan.gateUp[e] as FastPathObserver[]) if (o.routedWeight) o.shareRouted(r.gateUp);
      for (const o of plan.down[e] as FastPathObserver[]) if (o.routedWeight) o.shareRouted(r.down);
    }
  const pairs = routedPairsOf(selected, T, K, first, E);
  const chunk = Math.min(T, FAST_TOKENS_PER_CHUNK);
  const act = new Float32Array(Im * chunk);
  for (let c0 = 0; c0 < T; c0 += chunk) {
    const c1 = Math.min(T, c0 + chunk);
    const Tc = c1 - c0;
    const Xc = new Tensor(flat.data.subarray(c0 * H, c1 * H), [Tc, H]);
    if (state.sharedGateUp && !state.gateUpComplete) await state.sharedGateUp.add(Xc);
    for (const o of gateUpObservers) {
      o.rows(Tc);
      o.values?.(Xc);
    }
    for (let e = 0; e < E; e++) await expert(e, Xc, Tc, c0, c1);
  }

  /** Expert e on the chunk: its down_proj inputs and their statistics, its routed rows. */
  async function expert(e: number, Xc: Tensor, Tc: number, c0: number, c1: number): Promise<void> {
    const ex = experts[e] as SwiGluExpert;
    const obs = plan.down[e] as FastPathObserver[];
    const sum = obs.some((o) => o.wantsGram) ? (downSums[e] as GramAccumulator) : null;
    // expert e's down_proj inputs A [Tc, Im] and, when observed, A^T A added to its sum: one engine step
    const A = await engine.swigluExpert(Xc, ex.gate.weight, ex.up.weight, {
      act: act.subarray(0, Im * Tc),
      ...(sum ? { gram: sum.G, addGram: true } : {}),
    });
    if (sum) sum.rows += Tc;
    for (const o of obs) {
      o.rows(Tc);
      o.values?.(A);
    }
    // routed rows of this chunk: gather A's rows, down_proj, weight, add (and router-aware statistics)
    const r = routedGrams?.[e];
    if (!routed && !r) return;
    const { tokens, slots } = pairs[e] as RoutedPairs;
    const sel: number[] = [];
    for (let i = 0; i < tokens.length; i++) if ((tokens[i] as number) >= c0 && (tokens[i] as number) < c1) sel.push(i);
    if (sel.length === 0) return;
    const tk = Int32Array.from(sel, (pi) => tokens[pi] as number);
    const sl = Int32Array.from(sel, (pi) => slots[pi] as number);
    const local = Int32Array.from(tk, (t) => t - c0);
    const weights = routeWeights(topScores, tk, sl);
    if (routed)
      // the routed rows and their down_proj outputs in scratch memory, reused expert after expert
      await withFloats([local.length * Im, local.length * H] as const, async ([rows, out]) => {
        indexAddWeighted(routed, tk, await engine.linear(gatherRows(A, local, rows), ex.down.weight, out), weights);
      });
    if (r) {
      // router-aware statistics: the routed rows of this chunk, apart from the all-token ones
      const inChunk = { rows: local, weights };
      await r.gateUp.addRows(Xc, inChunk);
      await r.down.addRows(A, inChunk);
    }
  }
}

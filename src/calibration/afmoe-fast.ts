import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { indexAddWeighted } from "../engine/ops.js";
import { Linear } from "../nn/layers.js";
import { AfmoeMLP, routeWeights, routedPairs } from "../models/afmoe/modeling.js";
import { FastPathObserver, GramAccumulator, fastObserversOf } from "./observers.js";

/** Tokens per chunk, and rows of the stacked gate/up weight per product (a group of experts). */
export const FAST_TOKENS_PER_CHUNK = 2048;
export const FAST_ROWS_PER_PRODUCT = 1024;

/** What the fast path needs: each expert's Linears and the observers it must feed instead of hooks. */
export interface FastPlan {
  gateUp: FastPathObserver[];
  down: FastPathObserver[][];
}

/**
 * The fast path applies when nothing but fast-path-aware observers watches the experts
 * (a user's own hook on an expert or one of its Linears needs the per-expert path).
 */
export function fastPlan(experts: AfmoeMLP[]): FastPlan | null {
  const gateUp: FastPathObserver[] = [];
  const down: FastPathObserver[][] = [];
  for (const e of experts) {
    if (e.hookCount > 0) return null;
    const g = fastObserversOf(e.gate_proj);
    const u = fastObserversOf(e.up_proj);
    const d = fastObserversOf(e.down_proj);
    if (!g || !u || !d) return null;
    gateUp.push(...g, ...u);
    down.push(d);
  }
  return { gateUp, down };
}

/** Per calibration module: the stacked gate/up weights and the shared input statistics. */
export interface FastState {
  stacked: { sources: Tensor[]; W: Tensor } | null;
  sharedGateUp: GramAccumulator | null;
}

/** [gate_0; up_0; gate_1; up_1; ...] as one [2*E*Im, H] matrix, rebuilt only when a weight changes. */
function stackedGateUp(experts: AfmoeMLP[], state: FastState): Tensor {
  const sources = experts.flatMap((e) => [e.gate_proj.weight, e.up_proj.weight]);
  if (state.stacked && state.stacked.sources.every((s, i) => s === sources[i])) return state.stacked.W;
  const H = (sources[0] as Tensor).dim(1);
  const rows = sources.reduce((a, s) => a + s.dim(0), 0);
  const W = new Float32Array(rows * H);
  let off = 0;
  for (const s of sources) {
    W.set(s.data, off);
    off += s.size;
  }
  state.stacked = { sources, W: new Tensor(W, [rows, H]) };
  return state.stacked.W;
}

/**
 * All experts on all tokens, fast: per chunk of tokens, ONE product [2*E*Im, H] x [H, Tc] for
 * every expert's gate and up projection, ONE Gram product of the chunk for all gate/up
 * Hessians (their inputs are the same tokens), a Gram product per expert for down_proj
 * (its inputs differ), and down_proj outputs only for the routed rows. Adds the weighted
 * routed outputs into `routed` in the seed's order (experts in order, slot-major pairs).
 */
export async function allExpertsFast(
  flat: Tensor,
  topScores: Tensor,
  selected: Int32Array,
  experts: AfmoeMLP[],
  plan: FastPlan,
  state: FastState,
  routed: Tensor,
): Promise<void> {
  const engine = getEngine();
  const [T, H] = [flat.dim(0), flat.dim(1)];
  const K = topScores.dim(1);
  const E = experts.length;
  const Im = (experts[0] as AfmoeMLP).gate_proj.outFeatures;
  const W = stackedGateUp(experts, state);
  const wantShared = plan.gateUp.some((o) => o.wantsGram);
  if (wantShared && !state.sharedGateUp) state.sharedGateUp = new GramAccumulator(H);
  if (state.sharedGateUp) for (const o of plan.gateUp) o.shareWith(state.sharedGateUp);
  const pairs = experts.map((_, e) => routedPairs(selected, T, K, e));
  // experts per product: their gate/up rows [G*2*Im, H] times the chunk, into one reused buffer
  const G = Math.max(1, Math.floor(FAST_ROWS_PER_PRODUCT / (2 * Im)));
  const chunk = Math.min(T, FAST_TOKENS_PER_CHUNK);
  const scratch = new Float32Array(G * 2 * Im * chunk);
  for (let c0 = 0; c0 < T; c0 += chunk) {
    const c1 = Math.min(T, c0 + chunk);
    const Tc = c1 - c0;
    const Xc = new Tensor(flat.data.subarray(c0 * H, c1 * H), [Tc, H]);
    if (state.sharedGateUp) await state.sharedGateUp.add(Xc);
    for (const o of plan.gateUp) o.rows(Tc, null);
    for (let e0 = 0; e0 < E; e0 += G) {
      const e1 = Math.min(E, e0 + G);
      const rows = (e1 - e0) * 2 * Im;
      const Wg = new Tensor(W.data.subarray(e0 * 2 * Im * H, e1 * 2 * Im * H), [rows, H]);
      const gu = (await engine.linear(Wg, Xc, scratch.subarray(0, rows * Tc))).data; // [rows, Tc]
      for (let e = e0; e < e1; e++) {
        await expertFromGateUp(e, gu.subarray((e - e0) * 2 * Im * Tc, (e - e0 + 1) * 2 * Im * Tc), Tc, c0, c1);
      }
    }
  }

  /** swiglu of expert e from its [gate; up] rows (in place), its down statistics and routed rows. */
  async function expertFromGateUp(e: number, gu: Float32Array, Tc: number, c0: number, c1: number): Promise<void> {
    const n = Im * Tc;
    for (let i = 0; i < n; i++) {
      const g = gu[i] as number;
      gu[i] = (g / (1 + Math.exp(-g))) * (gu[n + i] as number);
    }
    const A = new Tensor(gu.subarray(0, n), [Im, Tc]); // expert e's down_proj inputs, feature-major
    const obs = plan.down[e] as FastPathObserver[];
    const gram = obs.some((o) => o.wantsGram) ? (await engine.linear(A, A)).data : null;
    for (const o of obs) o.rows(Tc, o.wantsGram ? gram : null);
    // routed rows of this chunk: gather A's columns, down_proj, weight, add
    const { tokens, slots } = pairs[e] as { tokens: Int32Array; slots: Int32Array };
    const sel: number[] = [];
    for (let i = 0; i < tokens.length; i++) if ((tokens[i] as number) >= c0 && (tokens[i] as number) < c1) sel.push(i);
    if (sel.length === 0) return;
    const rows = new Float32Array(sel.length * Im);
    sel.forEach((pi, r) => {
      const t = (tokens[pi] as number) - c0;
      for (let i = 0; i < Im; i++) rows[r * Im + i] = A.data[i * Tc + t] as number;
    });
    const down: Linear = (experts[e] as AfmoeMLP).down_proj;
    const out = await engine.linear(new Tensor(rows, [sel.length, Im]), down.weight);
    const tk = Int32Array.from(sel, (pi) => tokens[pi] as number);
    const sl = Int32Array.from(sel, (pi) => slots[pi] as number);
    indexAddWeighted(routed, tk, out, routeWeights(topScores, tk, sl));
  }
}

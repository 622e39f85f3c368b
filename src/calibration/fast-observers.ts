/**
 * Hooks with a fast-path twin: an observer a fused engine step can feed without calling the
 * Linear it watches. The all-experts fast path (fast-path.ts) feeds the experts' observers; a
 * watched SwiGLU MLP (a dense layer's, a shared expert) runs as one engine step here.
 */
import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { withFloats } from "../engine/scratch.js";
import type { Linear } from "../nn/layers.js";
import { setObservedStep } from "../nn/mlp.js";
import type { MoeExpert } from "../nn/moe.js";
import { type RoutedGram, currentRowRouting } from "./expert-statistics.js";
import type { GramAccumulator } from "./gram.js";

/**
 * An observer a fast path can feed without calling the Linear: it says whether it needs the
 * Gram product of the rows, and takes rows (and the Gram product) or a shared accumulator.
 */
export interface FastPathObserver {
  readonly wantsGram: boolean;
  /** the routed weight when the observer keeps routed rows apart (router-aware statistics), else null */
  readonly routedWeight: RoutedGram["routedWeight"] | null;
  /** this Linear's routed rows go to an accumulator (shared by an expert's gate and up) */
  shareRouted(acc: RoutedGram): void;
  /** `n` rows reached the Linear (their Gram sum, when wanted, is in the accumulator it shares) */
  rows(n: number): void;
  /** the rows' statistics go to an accumulator shared with other Linears of the block */
  shareWith(acc: GramAccumulator): void;
  /** the accumulator the Linear's own rows go to, the one its hook adds to (observers that want the Gram product) */
  own?(): GramAccumulator;
  /** the rows themselves [n, in], for observers of their values (static activation scales) */
  values?(x: Tensor): void;
}

const fastObservers = new WeakMap<Linear, Set<FastPathObserver>>();

/**
 * The widest down_proj input the one-step MLP takes (its Gram product [I, I], 64 MiB at 4,096):
 * the session adds the product to the sum through an intermediate as large, so a wider MLP (a
 * DeepSeek-V3 dense layer's 18,432) keeps the calls, whose Gram product goes straight into its buffer.
 */
const STEP_MAX_INTERMEDIATE = 4096;

/** Register a hook together with its fast-path twin; returns the remover of both. */
export function registerFastAwareHook(lin: Linear, hook: (x: Tensor) => void | Promise<void>, fast: FastPathObserver): () => void {
  setObservedStep(observedSwiglu);
  const removeHook = lin.registerForwardPreHook(async (_m, x) => {
    await hook(x);
  });
  let set = fastObservers.get(lin);
  if (!set) {
    set = new Set();
    fastObservers.set(lin, set);
  }
  set.add(fast);
  return () => {
    removeHook();
    set?.delete(fast);
  };
}

/** The fast-path observers of a Linear, or null when it also has hooks a fast path cannot feed. */
export function fastObserversOf(lin: Linear): FastPathObserver[] | null {
  const set = fastObservers.get(lin);
  const n = set?.size ?? 0;
  return lin.hookCount === n ? [...(set ?? [])] : null;
}

/**
 * A SwiGLU MLP whose Linears only fast-path observers watch, as one engine step: the Gram
 * product of x once for the gate and up observers (as their hooks would add it), then gate and up
 * products, SwiGLU, the down product, and the Gram product of the down_proj inputs added to the
 * down observer's own sum inside the engine. Null (call the Linears) inside an expert call with
 * routed rows to keep apart, with biases, with no rows, wider than STEP_MAX_INTERMEDIATE, or with
 * any other hook.
 */
async function observedSwiglu({ gate, up, down }: MoeExpert, x: Tensor): Promise<Tensor | null> {
  const gateUp = [fastObserversOf(gate), fastObserversOf(up)];
  const downObs = fastObserversOf(down);
  const rows = x.size / gate.inFeatures;
  const unfit =
    gate.hasBias ||
    up.hasBias ||
    down.hasBias ||
    rows === 0 ||
    gate.outFeatures > STEP_MAX_INTERMEDIATE ||
    currentRowRouting() !== undefined;
  if (unfit || !downObs || gateUp.some((o) => o === null)) return null;
  const inputs = (gateUp as FastPathObserver[][]).flat();
  const sums = ownSums(inputs);
  const downSums = ownSums(downObs);
  if (!sums || !downSums || downSums.length > 1) return null;
  const [k, im] = [gate.inFeatures, gate.outFeatures];
  const x2 = x.reshape([rows, k]);
  const out = new Float32Array(rows * down.outFeatures);
  await withFloats([rows * im, sums.length > 0 ? k * k : 0] as const, async ([act, product]) => {
    if (sums.length > 0) {
      const g = (await getEngine().gram(x2, product)).data;
      for (const acc of sums) acc.addGram(g, rows);
    }
    for (const o of inputs) {
      o.rows(rows);
      o.values?.(x2);
    }
    const sum = downSums[0];
    await getEngine().swigluExpert(x2, gate.weight, up.weight, {
      act,
      ...(sum ? { gram: sum.G, addGram: true } : {}),
      down: { weight: down.weight, out },
    });
    if (sum) sum.rows += rows;
    for (const o of downObs) {
      o.rows(rows);
      o.values?.(new Tensor(act, [rows, im]));
    }
  });
  return new Tensor(out, [...x.shape.slice(0, -1), down.outFeatures]);
}

/** The own sums of the observers that want the Gram product; null when one of them has none (it needs its hook). */
function ownSums(observers: readonly FastPathObserver[]): GramAccumulator[] | null {
  const sums: GramAccumulator[] = [];
  for (const o of observers) {
    if (!o.wantsGram) continue;
    if (!o.own) return null;
    sums.push(o.own());
  }
  return sums;
}

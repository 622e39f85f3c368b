/**
 * The steps a layer's work is made of, whether the layer runs whole or its routed experts one group
 * at a time (expert-groups.ts): observe a set of the layer's Linears during a pass, quantize them,
 * and turn the results into the layer's output tensors, always in the layer's own Linear order.
 */
import type { Tensor } from "../engine/tensor.js";
import { type HessianStats, type InputAbsMax, attachHessianObservers, attachInputAbsMax } from "../calibration/observers.js";
import { asMoeBlock } from "../nn/moe.js";
import type { InputShard } from "./layer-inputs.js";
import type { Module } from "../nn/module.js";
import type { SwiGluExpert } from "../calibration/fast-path.js";
import { CheckpointFormatError } from "../errors.js";
import {
  DEFAULT_STATISTICS,
  type ExpertStatisticsOptions,
  parseExpertStatistics,
  parseRoutedWeight,
} from "../calibration/expert-statistics.js";
import { quantizedLinearTensors } from "../export/compressed-tensors.js";
import type { LazyRaw, NamedRaw } from "../io/writer.js";
import type { DecoderLayer } from "../models/family.js";
import { Linear } from "../nn/layers.js";
import { hasStaticActivationScales } from "../quantization/scheme.js";
import type { Scheme } from "../quantization/scheme.js";
import { assertComplete } from "./preflight.js";
import { type Fallback, type LayerTargets, type QuantizedLinear, quantizeLayerLinears, siblingAbsMax } from "./quantize-layer.js";
import type { RunModel } from "./run.js";

/** What a layer's steps share: the run, how expert statistics are kept, GPTQ's settings, and the layer's inputs. */
export interface LayerSteps {
  run: RunModel;
  statistics: ExpertStatisticsOptions;
  calibrateAllExperts: boolean;
  fastPath: boolean;
  gptq: { dampening: number; blockSize: number };
  /** calibration samples (for progress) */
  samples: number;
  /** the shards of the layers' inputs (--shard-tokens; a worker's: none, its job names its shard) */
  shards: readonly InputShard[];
  /**
   * Layer `i`'s calibration inputs, batch by batch, with the samples and tokens done so far; they come
   * in shards of whole samples (--shard-tokens), and `endShard` is called after each.
   */
  eachInput(i: number, each: (h: Tensor, done: number, tokens: number) => Promise<void>, endShard?: () => void): Promise<void>;
}

/** What the run's options make of a layer's steps (a distributed worker derives the same from the run's manifest). */
export function stepSettings(run: RunModel): Pick<LayerSteps, "statistics" | "calibrateAllExperts" | "fastPath" | "gptq"> {
  const { opts } = run;
  return {
    statistics: {
      statistics: opts.expertStatistics === undefined ? DEFAULT_STATISTICS.statistics : parseExpertStatistics(opts.expertStatistics),
      routedWeight: opts.routedWeight === undefined ? DEFAULT_STATISTICS.routedWeight : parseRoutedWeight(opts.routedWeight),
    },
    calibrateAllExperts: opts.calibrateAllExperts ?? true,
    fastPath: opts.fastPath ?? true,
    gptq: { dampening: run.recipe.gptq.dampening ?? opts.dampening ?? 0.01, blockSize: run.recipe.gptq.blockSize ?? 128 },
  };
}

/** The quantized Linears of (part of) a layer, what fell back, and which expert Linears kept all-token statistics. */
export interface PartResult {
  results: QuantizedLinear[];
  fallbacks: Fallback[];
  allTokenFallbacks: string[];
  /** the largest input magnitude of its static-activation Linears that saw rows (0: none) */
  absMax: number;
}

export const schemeOfTarget =
  (run: RunModel) =>
  (n: string): Scheme =>
    run.schemeOf(n) as Scheme;

export type Expert = SwiGluExpert & Module<Tensor, Tensor>;

/** A layer's routed experts in order, each expert parameter's expert, and each expert submodule's (its Linears'). */
export interface LayerExperts {
  experts: Expert[];
  expertOf: Map<string, number>;
  linearExpert: Map<string, number>;
}

/** The layer's MoE block's experts (a layer run in expert groups has one). */
export function moeOf(layer: DecoderLayer, prefix: string): LayerExperts {
  const moe = expertsOf(layer, prefix);
  if (!moe) throw new CheckpointFormatError(`${prefix} has no MoE block to run in expert groups`);
  return moe;
}

/** The layer's routed experts, or null for a dense layer. */
export function expertsOf(layer: DecoderLayer, prefix: string): LayerExperts | null {
  const found = layer.namedModules(prefix).find(([, m]) => asMoeBlock(m) !== null);
  const block = found ? asMoeBlock(found[1]) : null;
  if (!block) return null;
  const experts = block.routedExperts() as Expert[];
  const index = new Map<unknown, number>(experts.map((e, k) => [e, k]));
  const expertOf = new Map<string, number>();
  const linearExpert = new Map<string, number>();
  for (const [n, m] of layer.namedModules(prefix)) {
    const e = index.get(m);
    if (e === undefined) continue;
    for (const [p] of m.namedParameters(n)) expertOf.set(p, e);
    for (const [l] of m.namedModules(n)) if (l !== n) linearExpert.set(l, e);
  }
  return { experts, expertOf, linearExpert };
}

/** What a pass over a layer's inputs tells its observers. */
export interface PassObservers {
  /** a shard of the inputs ended: the non-expert Linears' sums of it are added whole (HessianStats.endShard) */
  endShard(): void;
  /** the GPTQ statistics being taken, by Linear (empty: none) */
  hessians: ReadonlyMap<string, HessianStats>;
  /** the input maxima being taken, by Linear (static activation scales; empty: none) */
  inputAbsMax: ReadonlyMap<string, InputAbsMax>;
}

/** The statistics a pass took of a layer's target Linears, and which expert Linears kept all-token statistics. */
export interface Observed {
  targets: LayerTargets;
  allTokenFallbacks: string[];
}

/**
 * Observe the target Linears of `layer` that `include` names while `pass` runs: Hessians for GPTQ,
 * input maxima for static activation scales.
 */
export async function observeLayer(
  steps: LayerSteps,
  layer: DecoderLayer,
  i: number,
  include: (linear: string) => boolean,
  pass: (o: PassObservers) => Promise<void>,
): Promise<Observed> {
  const { run } = steps;
  const prefix = `model.layers.${i}`;
  const schemeOf = schemeOfTarget(run);
  const byGptq = (n: string): boolean => run.isTarget(n) && run.methodOf(n) === "gptq";
  const targets: LayerTargets = {
    linears: new Map(),
    hessians: new Map(),
    inputAbsMax: new Map(),
    sharedGlobalScale: run.sharedGlobalScale,
  };
  for (const [n, m] of layer.namedModules(prefix)) if (m instanceof Linear && run.isTarget(n) && include(n)) targets.linears.set(n, m);
  const gptqHere = [...targets.linears.keys()].some(byGptq);
  const observers = gptqHere ? attachHessianObservers(layer, (n) => targets.linears.has(n) && byGptq(n), prefix, steps.statistics) : null;
  const staticInputs = new Map([...targets.linears].filter(([n]) => hasStaticActivationScales(schemeOf(n))));
  const absMax = staticInputs.size > 0 ? attachInputAbsMax(staticInputs) : null;
  const experts = expertsOf(layer, prefix)?.linearExpert;
  try {
    await pass({
      endShard: () => observers?.endShard((n) => !experts?.has(n)),
      hessians: observers?.stats ?? new Map(),
      inputAbsMax: absMax?.stats ?? new Map(),
    });
  } finally {
    observers?.remove();
    absMax?.remove();
  }
  const allTokenFallbacks: string[] = [];
  if (observers) {
    targets.hessians = observers.stats;
    for (const [n, st] of observers.stats) if (st.allTokenFallback) allTokenFallbacks.push(n);
  }
  if (absMax) targets.inputAbsMax = absMax.stats;
  return { targets, allTokenFallbacks };
}

/**
 * Observe the target Linears of `layer` that `include` names while `pass` runs (observeLayer), then
 * quantize them: their weights become the dequantized values, so what runs after sees the quantization error.
 */
export async function observeAndQuantize(
  steps: LayerSteps,
  layer: DecoderLayer,
  i: number,
  include: (linear: string) => boolean,
  pass: (o: PassObservers) => Promise<void>,
  where: Pick<Parameters<typeof quantizeLayerLinears>[4], "preps" | "pool" | "keepWorkers"> = {},
): Promise<PartResult> {
  const { run } = steps;
  const { targets, allTokenFallbacks } = await observeLayer(steps, layer, i, include, pass);
  const { results, fallbacks } = await quantizeLayerLinears(targets, schemeOfTarget(run), run.methodOf, run.scaleDType, {
    ...steps.gptq,
    layerLabel: `layer ${i}`,
    workers: run.opts.workers,
    ...where,
  });
  targets.hessians.clear();
  return { results, fallbacks, allTokenFallbacks, absMax: siblingAbsMax(targets) };
}

/** What a finished layer reports: each quantized Linear's GPTQ loss, what fell back, which expert Linears kept all-token statistics. */
export interface LayerOutcome {
  results: readonly { name: string; loss: number }[];
  fallbacks: Fallback[];
  allTokenFallbacks: string[];
}

/** `r`'s lists in the order of the layer's Linears (results, fallbacks and all-token fallbacks alike), whatever order the parts came in. */
export function inLinearOrder<R extends LayerOutcome>(layer: DecoderLayer, i: number, r: R): R {
  const order = new Map(layer.namedModules(`model.layers.${i}`).map(([n], k) => [n, k]));
  const at = (n: string): number => order.get(n) ?? -1;
  return {
    ...r,
    results: [...r.results].sort((a, b) => at(a.name) - at(b.name)),
    fallbacks: [...r.fallbacks].sort((a, b) => at(a.module) - at(b.module)),
    allTokenFallbacks: [...r.allTokenFallbacks].sort((a, b) => at(a) - at(b)),
  };
}

/** A quantized Linear's output tensors, checked complete. */
export function quantizedTensors(run: RunModel, q: QuantizedLinear): NamedRaw[] {
  const scheme = schemeOfTarget(run)(q.name);
  const tensors = quantizedLinearTensors(q.name, q.weight, scheme.format, run.scaleDType, q.inputScale);
  assertComplete(
    q.name,
    tensors.map((t) => t.name),
    scheme,
  );
  return tensors;
}

/** The output tensors of a layer quantized whole (`results`: its quantized Linears), in the order of its parameters. */
export function wholeLayerTensors(
  run: RunModel,
  layer: DecoderLayer,
  i: number,
  results: readonly QuantizedLinear[],
): (NamedRaw | LazyRaw)[] {
  const byName = new Map(results.map((r) => [r.name, r]));
  return layerOutputTensors(run, layer, i, (n) => {
    const q = byName.get(n);
    return q ? quantizedTensors(run, q) : null;
  });
}

/**
 * The layer's output tensors in the order of its parameters: a quantized Linear's tensors (from
 * `quantized`, by Linear name), every other parameter's source tensor copied unchanged, once.
 */
export function layerOutputTensors(
  run: RunModel,
  layer: DecoderLayer,
  i: number,
  quantized: (linear: string) => (NamedRaw | LazyRaw)[] | null,
): (NamedRaw | LazyRaw)[] {
  const out: (NamedRaw | LazyRaw)[] = [];
  const copied = new Set<string>();
  for (const [n] of layer.namedParameters(`model.layers.${i}`)) {
    const q = n.endsWith(".weight") ? quantized(n.slice(0, -".weight".length)) : null;
    if (q) out.push(...q);
    else {
      const src = run.mapping.sources.get(n) ?? n;
      if (!copied.has(src)) out.push({ name: src, ...run.ck.readRaw(src) });
      copied.add(src);
    }
  }
  return out;
}

import path from "node:path";
import type { Tensor } from "../engine/tensor.js";
import { NumericalError, UsageError, asFormatError, asUsageError } from "../errors.js";
import { confinedFile } from "../io/files.js";
import { checkpointHash, sha256File } from "../io/hash.js";
import { firstNonFinite } from "../io/safetensors.js";
import type { Seed } from "../util/numpy-random.js";
import { withMoeCalibration } from "../calibration/context.js";
import { attachHessianObservers, attachInputAbsMax } from "../calibration/observers.js";
import {
  DEFAULT_STATISTICS,
  type ExpertStatisticsOptions,
  formatExpertStatistics,
  parseExpertStatistics,
  parseRoutedWeight,
} from "../calibration/expert-statistics.js";
import { trackCoverage, type LayerCoverage } from "../calibration/coverage.js";
import { Checkpoint } from "../io/checkpoint.js";
import { ShardedWriter } from "../io/writer.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { modelFiles } from "../io/model-files.js";
import { Linear } from "../nn/layers.js";
import { checkpointSource } from "../io/tensor-source.js";
import { requiredSuffixes } from "../io/compressed-tensors.js";
import { assertFinite, assertMappingComplete } from "../nn/weights.js";
import type { CausalLM } from "../models/family.js";
import { type FusedGroup, fusedSchemeConflicts, oneWeightSets } from "../models/fused.js";
import { type ExpertShape, vllmServingProblems } from "../export/vllm-support.js";
import { readModelConfig } from "../models/registry.js";
import { quantizedLinearTensors } from "../export/compressed-tensors.js";
import { OutputFolder } from "../export/output.js";
import type { ScaleDType } from "../quantization/params.js";
import { type Scheme, matchesAny, quantizationConfig, resolveScheme, validatePatterns } from "../quantization/scheme.js";
import { BUNDLED_DATASET, BUNDLED_MODEL, MOECAL_VERSION } from "../paths.js";
import { loadTokenizedSamples } from "./dataset.js";
import { type Fallback, type LayerTargets, type Method, gptqPoolSize, quantizeLayerLinears } from "./quantize-layer.js";
import { closeSharedGptqPool, sharedGptqPool } from "../quantization/gptq-pool.js";
import { type LayerReport, type OneshotReport, layerSummary, writeReportFiles } from "./report.js";
import { checkUnexpectedTensors, fitGroupSize, seedForJson } from "./preflight.js";
import { type StreamModel, eachLayer, embedSamples } from "./stream.js";

export interface OneshotOptions {
  model?: string;
  dataset?: string;
  scheme?: string;
  method?: Method;
  groupSize?: number;
  numSamples?: number;
  maxSeqLength?: number;
  calibrateAllExperts?: boolean;
  /** use the all-experts fast path (default true; false forces the per-expert path) */
  fastPath?: boolean;
  /** how an expert's GPTQ statistics weight its rows: uniform, unrouted:ALPHA or shrink:K (docs/expert-statistics.md) */
  expertStatistics?: string;
  /** weight of an expert's routed rows: one, score (the router's combine weight) or score2 */
  routedWeight?: string;
  /** added to the default ignore list (lm_head and every router gate) */
  ignore?: string[];
  /**
   * refuse an ignore list that splits a module vLLM fuses (q/k/v, gate/up, a layer's routed
   * experts) between quantized and unquantized, since vLLM cannot load that (default true)
   */
  vllmCheck?: boolean;
  /** dataset shuffling seed: a non-negative integer of any size, as NumPy's default_rng takes */
  seed?: Seed;
  output?: string;
  overwrite?: boolean;
  actorder?: "static" | null;
  dampening?: number;
  /** max bytes per output shard */
  maxShardBytes?: number;
  onProgress?: (e: ProgressEvent) => void;
  warn?: (message: string) => void;
}

export type ProgressEvent =
  | { kind: "start"; layers: number; samples: number; tokens: number }
  | { kind: "layer"; layer: number; layers: number }
  | { kind: "samples"; layer: number; phase: "calibrate" | "propagate"; done: number; total: number }
  | { kind: "layer-done"; layer: number; summary: LayerReport };

export interface OneshotResult {
  output: string;
  report: OneshotReport;
}

function scaleDTypeOf(ck: Checkpoint, name: string): ScaleDType {
  const d = ck.info(name).dtype;
  return d === "BF16" || d === "F16" ? d : "F32";
}

/** Weights of the target Linears of the largest decoder layer (what decides GPTQ's worker pool). */
function largestLayerWork(model: CausalLM, isTarget: (n: string) => boolean): number {
  const perLayer = new Map<string, number>();
  for (const [n, m] of model.namedModules()) {
    const layer = /^model\.layers\.(\d+)\./.exec(n)?.[1];
    if (layer === undefined || !(m instanceof Linear) || !isTarget(n)) continue;
    perLayer.set(layer, (perLayer.get(layer) ?? 0) + m.inFeatures * m.outFeatures);
  }
  return Math.max(0, ...perLayer.values());
}

/** Every quantized Linear must carry the tensors its format needs. */
function assertComplete(name: string, present: string[], scheme: Scheme): void {
  const missing = requiredSuffixes(scheme.format, scheme.weights, scheme.inputActivations).filter((s) => !present.includes(`${name}.${s}`));
  if (missing.length) throw new NumericalError(`${name}: quantized tensors incomplete (missing ${missing.join(", ")})`);
}

/** The shapes vLLM checks: one expert of each quantized fused MoE module, and every other quantized Linear. */
function servedShapes(
  model: CausalLM,
  groups: readonly FusedGroup[],
  targets: ReadonlySet<string>,
): [ExpertShape[], [string, number, number][]] {
  const linear = (n: string): Linear => model.getSubmodule(n) as Linear;
  const moe = groups.filter((g) => g.weights && g.members.every((m) => targets.has(m)));
  const inMoe = new Set(moe.flatMap((g) => g.members));
  const experts = moe.map((g) => {
    const gate = linear(g.members[0] as string);
    return { module: g.module, hidden: gate.inFeatures, intermediate: gate.outFeatures };
  });
  const dense = [...targets]
    .filter((n) => !inMoe.has(n))
    .map((n) => [n, linear(n).outFeatures, linear(n).inFeatures] as [string, number, number]);
  return [experts, dense];
}

function defaultOutput(modelDir: string, scheme: string): string {
  return path.resolve(`${path.basename(path.resolve(modelDir))}-${scheme.toUpperCase()}`);
}

/**
 * Calibrate and quantize an AFMoE checkpoint layer by layer (llm-compressor's sequential
 * pipeline), every MoE block swapped for its calibration module while statistics are
 * collected, and write a compressed-tensors checkpoint atomically.
 */
export async function oneshot(opts: OneshotOptions = {}): Promise<OneshotResult> {
  const t0 = performance.now();
  const modelDir = opts.model ?? BUNDLED_MODEL;
  const datasetFile = opts.dataset ?? BUNDLED_DATASET;
  const method: Method = opts.method ?? "gptq";
  if (method !== "gptq" && method !== "rtn") throw new UsageError(`unknown method "${String(method)}" (gptq or rtn)`);
  let scheme = resolveScheme(opts.scheme ?? "W4A16", { groupSize: opts.groupSize, actorder: opts.actorder });
  const calibrateAllExperts = opts.calibrateAllExperts ?? true;
  const statistics: ExpertStatisticsOptions = {
    statistics: opts.expertStatistics === undefined ? DEFAULT_STATISTICS.statistics : parseExpertStatistics(opts.expertStatistics),
    routedWeight: opts.routedWeight === undefined ? DEFAULT_STATISTICS.routedWeight : parseRoutedWeight(opts.routedWeight),
  };
  const warn = opts.warn ?? ((m: string) => process.emitWarning(m));
  validatePatterns(opts.ignore ?? []);

  const { family, config } = readModelConfig(modelDir);
  const ignore = [...family.defaultIgnore, ...(opts.ignore ?? [])];
  if (config.raw.quantization_config) throw new UsageError(`${modelDir} is already quantized (config.json has quantization_config)`);
  const maxSeqLength = opts.maxSeqLength ?? Math.min(2048, config.maxPositionEmbeddings);
  if (maxSeqLength > config.maxPositionEmbeddings) {
    throw new UsageError(`--max-seq-length ${maxSeqLength} exceeds the model's max_position_embeddings ${config.maxPositionEmbeddings}`);
  }
  const out = new OutputFolder(opts.output ?? defaultOutput(modelDir, scheme.name), {
    overwrite: opts.overwrite,
    inputs: [
      { what: "model", path: modelDir },
      { what: "dataset", path: datasetFile },
    ],
    warn,
  });
  try {
    const ck = Checkpoint.open(modelDir);
    ck.assertNoAnomalies();
    const source = checkpointSource(ck);
    const model = family.build(config);
    const mapping = family.mapWeights(
      config,
      model.namedParameters().map(([n, p]) => [n, p.shape] as const),
      new Map(ck.names().map((n) => [n, ck.info(n).shape])),
    );
    assertMappingComplete(mapping, modelDir);
    const tokenizer = loadTokenizer(modelDir);
    const samples = loadTokenizedSamples(datasetFile, tokenizer, {
      numSamples: opts.numSamples ?? 512,
      maxSeqLength,
      shuffleSeed: opts.seed ?? 42,
    });
    const tokens = samples.reduce((a, s) => a + s.length, 0);

    const allLinears = model
      .namedModules()
      .filter(([, m]) => m instanceof Linear)
      .map(([n]) => n);
    const ignored = allLinears.filter((n) => matchesAny(n, ignore));
    const isTarget = (n: string): boolean => !matchesAny(n, ignore);
    for (const p of opts.ignore ?? []) {
      if (!allLinears.some((n) => matchesAny(n, [p])))
        warn(
          `--ignore ${p} matches no Linear layer of the model (names look like ${allLinears.find((n) => n.includes(".experts.")) ?? allLinears[0]}; re: patterns match from the start)`,
        );
    }
    if (opts.vllmCheck ?? true) {
      const conflicts = fusedSchemeConflicts(family.fusedGroups(allLinears), (n) => (isTarget(n) ? scheme.name : "unquantized"));
      if (conflicts.length) {
        const rest =
          conflicts
            .slice(1, 4)
            .map((c) => `\n  ${c}`)
            .join("") + (conflicts.length > 4 ? `\n  (${conflicts.length - 4} more)` : "");
        throw new UsageError(
          `the ignore list splits ${conflicts.length} module(s) that vLLM fuses, so vLLM could not load the result (ignore all members of each or none, or pass --no-vllm-check): ${conflicts[0]}${rest}`,
        );
      }
    }
    const targetSet = new Set(allLinears.filter(isTarget));
    const sharedGlobalScale = oneWeightSets(family.fusedGroups(allLinears));
    checkUnexpectedTensors(mapping.unexpected, config, targetSet, modelDir, warn);
    // every tensor passed through unquantized is checked before anything is written
    const targetWeights = new Set([...targetSet].map((n) => `${n}.weight`));
    const passThrough = new Set(
      [...mapping.sources]
        .filter(([p]) => !targetWeights.has(p))
        .map(([, src]) => src)
        .concat(mapping.unexpected),
    );
    for (const n of passThrough) {
      const bad = firstNonFinite(ck.readRaw(n));
      if (bad >= 0)
        throw new NumericalError(
          `${modelDir}: tensor "${n}" (written unquantized) holds a non-finite value at flat index ${bad}; nothing was written`,
        );
    }
    const firstTarget = allLinears.find(isTarget);
    scheme = fitGroupSize(scheme, model, isTarget, opts.groupSize !== undefined, warn);
    const serving = vllmServingProblems(scheme, ...servedShapes(model, family.fusedGroups(allLinears), targetSet));
    if (serving.length) warn(`${serving[0]}${serving.length > 1 ? ` (and ${serving.length - 1} more module(s) like it)` : ""}`);
    const scaleDType: ScaleDType = firstTarget ? scaleDTypeOf(ck, `${firstTarget}.weight`) : "BF16";

    const writer = new ShardedWriter(out.tmp, opts.maxShardBytes ?? 2 * 1024 ** 3);
    const written = new Set<string>();
    const copyRaw = (param: string): void => {
      const src = mapping.sources.get(param) ?? param;
      if (written.has(src)) return;
      written.add(src);
      writer.add({ name: src, ...ck.readRaw(src) });
    };
    opts.onProgress?.({ kind: "start", layers: config.numHiddenLayers, samples: samples.length, tokens });
    // GPTQ workers boot in their own threads while layer 0 calibrates, instead of when the first
    // large layer is quantized (the pool is kept across layers and closed at the end)
    const poolSize = method === "gptq" ? gptqPoolSize(largestLayerWork(model, isTarget)) : 0;
    if (poolSize > 0) void sharedGptqPool(poolSize);

    const streamed: StreamModel = { model, source, mapping, config };
    const hidden0 = await embedSamples(streamed, samples);
    copyRaw("model.embed_tokens.weight");

    const layerReports: LayerReport[] = [];
    const coverage: Record<string, LayerCoverage> = {};
    const fallbacks: Fallback[] = [];
    const allTokenFallbacks: string[] = [];
    await eachLayer(streamed, hidden0, async (layer, i, hidden) => {
      opts.onProgress?.({ kind: "layer", layer: i, layers: config.numHiddenLayers });
      const prefix = `model.layers.${i}`;
      const targets: LayerTargets = { linears: new Map(), hessians: new Map(), inputAbsMax: new Map(), sharedGlobalScale };
      for (const [n, m] of layer.namedModules(prefix)) if (m instanceof Linear && isTarget(n)) targets.linears.set(n, m);
      const observers = method === "gptq" ? attachHessianObservers(layer, (n) => targets.linears.has(n), prefix, statistics) : null;
      const ia = scheme.inputActivations;
      const absMax = ia && (!ia.dynamic || ia.dynamic === "local") ? attachInputAbsMax(targets.linears) : null;
      const tracker = trackCoverage(layer, prefix);
      try {
        await withMoeCalibration(layer, { calibrateAllExperts, config, fastPath: opts.fastPath ?? true }, async (l) => {
          for (let s = 0; s < hidden.length; s++) {
            await l.call(hidden[s] as Tensor);
            opts.onProgress?.({ kind: "samples", layer: i, phase: "calibrate", done: s + 1, total: hidden.length });
          }
        });
      } finally {
        tracker.remove();
        observers?.remove();
        absMax?.remove();
      }
      if (observers) {
        targets.hessians = observers.stats;
        for (const [n, st] of observers.stats) if (st.allTokenFallback) allTokenFallbacks.push(n);
      }
      if (absMax) targets.inputAbsMax = absMax.stats;
      const { results, fallbacks: fb } = await quantizeLayerLinears(targets, scheme, method, scaleDType, {
        dampening: opts.dampening ?? 0.01,
        blockSize: 128,
        warn,
        layerLabel: `layer ${i}`,
      });
      fallbacks.push(...fb);
      targets.hessians.clear();
      const next: Tensor[] = [];
      // the last layer's outputs feed only unquantized modules (norm, lm_head): no propagation needed
      const propagate = i < config.numHiddenLayers - 1;
      for (let s = 0; propagate && s < hidden.length; s++) {
        next.push(await layer.call(hidden[s] as Tensor));
        opts.onProgress?.({ kind: "samples", layer: i, phase: "propagate", done: s + 1, total: hidden.length });
      }
      for (const h of next) assertFinite(h, `layer ${i}: output hidden states (calibration data through the quantized layer)`);
      const quantizedByWeight = new Map(results.map((r) => [`${r.name}.weight`, r]));
      for (const [n] of layer.namedParameters(prefix)) {
        const q = quantizedByWeight.get(n);
        if (q) {
          const tensors = quantizedLinearTensors(q.name, q.weight, scheme.format, scaleDType, q.inputScale);
          assertComplete(
            q.name,
            tensors.map((t) => t.name),
            scheme,
          );
          for (const t of tensors) writer.add(t);
        } else copyRaw(n);
      }
      const cov = tracker.coverage.layers[String(i)] ?? null;
      if (cov) coverage[String(i)] = cov;
      const summary = layerSummary(i, cov, results, fb);
      layerReports.push(summary);
      opts.onProgress?.({ kind: "layer-done", layer: i, summary });
      return next;
    });
    copyRaw("model.norm.weight");
    copyRaw("lm_head.weight");
    for (const n of mapping.unexpected) copyRaw(n);
    writer.finish();

    const qc = quantizationConfig(scheme, ignored, method === "gptq" ? scheme.weights.actorder : null);
    out.writeFile("config.json", `${JSON.stringify({ ...config.raw, quantization_config: qc }, null, 2)}\n`);
    const companions = modelFiles(modelDir, config.raw);
    if (companions.missing.length)
      warn(`${modelDir}: auto_map names remote code that is not in the folder (${companions.missing.join(", ")}); the output lacks it too`);
    for (const f of companions.files) out.copyFrom(confinedFile(modelDir, f, asFormatError), f);
    const report: OneshotReport = {
      moecal_version: MOECAL_VERSION,
      model: { name: path.basename(path.resolve(modelDir)), sha256: checkpointHash(modelDir, ck.weightFiles(), asFormatError) },
      scheme: scheme.name,
      method,
      group_size: scheme.weights.groupSize,
      actorder: method === "gptq" ? scheme.weights.actorder : null,
      dataset: { name: path.basename(datasetFile), sha256: sha256File(datasetFile, asUsageError) },
      num_samples: samples.length,
      tokens,
      max_seq_length: maxSeqLength,
      calibrate_all_experts: calibrateAllExperts,
      expert_statistics: {
        setting: formatExpertStatistics(statistics.statistics),
        routed_weight: statistics.routedWeight,
        all_token_fallbacks: allTokenFallbacks,
      },
      seed: seedForJson(opts.seed ?? 42),
      ignore,
      coverage: { layers: coverage },
      fallbacks,
      layers: layerReports,
      wall_seconds: (performance.now() - t0) / 1000,
      peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
    await writeReportFiles(out, report);
    return { output: out.commit(), report };
  } catch (e) {
    out.abort();
    throw e;
  } finally {
    await closeSharedGptqPool();
  }
}

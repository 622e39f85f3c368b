import path from "node:path";
import { ONESHOT_OPTIONS, checkOptions } from "./options.js";
import { checkStop, safePoint } from "../util/interrupt.js";
import { Tensor } from "../engine/tensor.js";
import { NumericalError, UsageError, asFormatError, asUsageError } from "../errors.js";
import { confinedFile } from "../io/files.js";
import { checkpointHash, sha256File } from "../io/hash.js";
import { firstNonFiniteIn } from "../io/safetensors.js";
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
import { trackCoverage } from "../calibration/coverage.js";
import { Checkpoint } from "../io/checkpoint.js";
import { DEFAULT_SHARD_BYTES, type NamedRaw, PIECE_BYTES, ShardedWriter } from "../io/writer.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { modelFiles } from "../io/model-files.js";
import { Linear } from "../nn/layers.js";
import { checkpointSource } from "../io/tensor-source.js";
import { assertFinite, assertMappingComplete } from "../nn/weights.js";
import { fusedSchemeConflicts, oneWeightSets } from "../models/fused.js";
import { servingProblems } from "../export/vllm-support.js";
import { readModelConfig } from "../models/registry.js";
import { quantizedLinearTensors } from "../export/compressed-tensors.js";
import { OutputFolder } from "../export/output.js";
import type { ScaleDType } from "../quantization/params.js";
import { matchesAny, quantizationConfig, resolveScheme, validatePatterns } from "../quantization/scheme.js";
import { BUNDLED_DATASET, BUNDLED_MODEL, MOECAL_VERSION } from "../paths.js";
import { loadTokenizedSamples, seqLengthFor } from "./dataset.js";
import { type LayerTargets, type Method, gptqPoolSize, quantizeLayerLinears } from "./quantize-layer.js";
import { closeSharedGptqPool, sharedGptqPool } from "../quantization/gptq-pool.js";
import { type LayerReport, type OneshotReport, layerSummary, writeReportFiles } from "./report.js";
import {
  assertComplete,
  assertNoFusedSplit,
  checkUnexpectedTensors,
  fitGroupSize,
  largestLayerWork,
  scaleDTypeOf,
  seedForJson,
} from "./preflight.js";
import { type StreamModel, withEmbeddings, withParameters } from "./stream.js";
import { BATCH_TOKENS, type CheckpointStage, HIDDEN_CHUNK_TOKENS, WorkFolder, type WorkState, workFolderBytes } from "./work-folder.js";
import { samplesHash, tokenizerIdentity } from "./work-manifest.js";
import { type Plan, plan } from "./plan.js";
import { checkPlan, freeDiskBytes } from "./plan-report.js";
import { availableMemory, peakRssBytes } from "../util/memory.js";

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
  /** discard the work folder of an earlier run to this output instead of resuming it */
  restart?: boolean;
  /** refuse to start when the plan's peak memory exceeds this many bytes (default: the machine's available memory) */
  maxMemory?: number;
  /** called inside each layer's checkpoint (tests stop the process there) */
  onCheckpoint?: (stage: CheckpointStage, layer: number) => void;
  warn?: (message: string) => void;
}

export type ProgressEvent =
  | { kind: "start"; layers: number; samples: number; tokens: number }
  | { kind: "layer"; layer: number; layers: number }
  | { kind: "phase"; layer: number; phase: "calibrate" | "quantize" | "propagate" | "write" }
  /** `tokens`: tokens of the samples done so far in this phase */
  | { kind: "samples"; layer: number; phase: "calibrate" | "propagate"; done: number; total: number; tokens: number }
  | { kind: "layer-done"; layer: number; summary: LayerReport }
  | { kind: "resume"; layer: number; layers: number; folder: string }
  | { kind: "plan"; plan: Plan };

export interface OneshotResult {
  output: string;
  report: OneshotReport;
  /** this run's time and peak memory (not in moecal.json, which a resumed run writes byte for byte as an uninterrupted one) */
  wallSeconds: number;
  peakRssMb: number;
}

function defaultOutput(modelDir: string, scheme: string): string {
  return path.resolve(`${path.basename(path.resolve(modelDir))}-${scheme.toUpperCase()}`);
}

/**
 * Calibrate and quantize an AFMoE checkpoint layer by layer (llm-compressor's sequential
 * pipeline), every MoE block swapped for its calibration module while statistics are
 * collected, and write a compressed-tensors checkpoint atomically.
 */
export async function oneshot(options: OneshotOptions = {}): Promise<OneshotResult> {
  const t0 = performance.now();
  const opts = checkOptions("oneshot", ONESHOT_OPTIONS, options) as OneshotOptions;
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
  const maxSeqLength = seqLengthFor(opts.maxSeqLength, config.maxPositionEmbeddings);
  const out = new OutputFolder(opts.output ?? defaultOutput(modelDir, scheme.name), {
    overwrite: opts.overwrite,
    inputs: [
      { what: "model", path: modelDir },
      { what: "dataset", path: datasetFile },
    ],
    warn,
  });
  let work: WorkFolder | undefined;
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
    // companion files (tokenizer, remote code) are checked before any work, copied at the end
    const companions = modelFiles(modelDir, config.raw);
    if (companions.missing.length)
      warn(`${modelDir}: auto_map names remote code that is not in the folder (${companions.missing.join(", ")}); the output lacks it too`);
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
    if (opts.vllmCheck ?? true)
      assertNoFusedSplit(fusedSchemeConflicts(family.fusedGroups(allLinears), (n) => (isTarget(n) ? scheme.name : "unquantized")));
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
      const bad = firstNonFiniteIn(ck.info(n).dtype, ck.rawChunks(n, PIECE_BYTES));
      if (bad >= 0)
        throw new NumericalError(
          `${modelDir}: tensor "${n}" (written unquantized) holds a non-finite value at flat index ${bad}; nothing was written`,
        );
    }
    const firstTarget = allLinears.find(isTarget);
    scheme = fitGroupSize(scheme, model, isTarget, opts.groupSize !== undefined, warn);
    const fitted = scheme;
    const serving = servingProblems(model, family.fusedGroups(allLinears), allLinears, (n) => (targetSet.has(n) ? fitted : null));
    if (serving.length) warn(`${serving[0]}${serving.length > 1 ? ` (and ${serving.length - 1} more module(s) like it)` : ""}`);
    const scaleDType: ScaleDType = firstTarget ? scaleDTypeOf(ck, `${firstTarget}.weight`) : "BF16";

    const thePlan = await plan(
      { ...opts, model: modelDir, dataset: datasetFile, method, maxSeqLength },
      { samples, opened: { family, config, ck, model, scheme } },
    );
    // an old work folder is disk the run gets back: --restart deletes it, a resume reuses it
    const freeDisk = freeDiskBytes(out.target) + workFolderBytes(out.target);
    checkPlan(thePlan, { maxMemory: opts.maxMemory ?? availableMemory(), freeDisk, output: out.target });
    opts.onProgress?.({ kind: "plan", plan: thePlan });
    const datasetSha = sha256File(datasetFile, asUsageError);
    // the model's content hash names it in moecal.json and identifies the run for a resume
    const modelSha = checkpointHash(modelDir, ck.weightFiles(), asFormatError);
    const N = config.numHiddenLayers;
    work = new WorkFolder(
      out.target,
      {
        moecal_version: MOECAL_VERSION,
        model_sha256: modelSha,
        tokenizer: tokenizerIdentity(modelDir),
        dataset_sha256: datasetSha,
        samples_sha256: samplesHash(samples),
        options: {
          scheme: scheme.name,
          method,
          group_size: scheme.weights.groupSize,
          actorder: scheme.weights.actorder,
          num_samples: samples.length,
          max_seq_length: maxSeqLength,
          calibrate_all_experts: calibrateAllExperts,
          fast_path: opts.fastPath ?? true,
          expert_statistics: formatExpertStatistics(statistics.statistics),
          routed_weight: statistics.routedWeight,
          ignore,
          vllm_check: opts.vllmCheck ?? true,
          seed: seedForJson(opts.seed ?? 42),
          dampening: opts.dampening ?? 0.01,
        },
      },
      opts.restart ?? false,
      N,
    );
    const state: WorkState = work.resume ?? { layer: -1, layers: [], coverage: {}, fallbacks: [], allTokenFallbacks: [] };
    opts.onProgress?.({ kind: "start", layers: N, samples: samples.length, tokens });
    if (work.resume) opts.onProgress?.({ kind: "resume", layer: work.resume.layer, layers: N, folder: work.dir });
    // GPTQ workers boot in their own threads while layer 0 calibrates, instead of when the first
    // large layer is quantized (the pool is kept across layers and closed at the end)
    const poolSize = method === "gptq" ? gptqPoolSize(largestLayerWork(model, isTarget)) : 0;
    if (poolSize > 0) void sharedGptqPool(poolSize);

    const streamed: StreamModel = { model, source, mapping, config };
    const H = (model.namedParameters().find(([n]) => n === "model.embed_tokens.weight")?.[1].shape[1] ?? 0) as number;
    const lengths = samples.map((s) => s.length);
    const layerWork = work;
    // hidden states live in the work folder, not in memory: the embeddings (layer 0's input) first
    if (state.layer < 0) {
      const w = work.hiddenWriter(-1);
      await withEmbeddings(streamed, async () => {
        for (const ids of samples) w.append(await model.model.embed({ ids: Int32Array.from(ids), shape: [1, ids.length] }));
      });
      w.commit();
    }
    /**
     * The samples' inputs of layer `i`, read back in chunks: consecutive samples of one length
     * as one batch [B, S, H] of at most BATCH_TOKENS tokens (a view, no copy), with the number
     * of samples and of tokens up to and including it.
     */
    const eachInput = async (i: number, each: (h: Tensor, done: number, tokens: number) => Promise<void>): Promise<void> => {
      let done = 0;
      let tokens = 0;
      for await (const chunk of layerWork.hiddenChunks(i - 1, lengths, H, HIDDEN_CHUNK_TOKENS))
        for (let a = 0; a < chunk.length; ) {
          const first = chunk[a] as Tensor;
          const S = first.dim(1);
          let b = a + 1;
          while (b < chunk.length && (chunk[b] as Tensor).dim(1) === S && (b - a + 1) * S <= BATCH_TOKENS) b++;
          const B = b - a;
          const h = B === 1 ? first : new Tensor(new Float32Array(first.data.buffer, first.data.byteOffset, B * S * H), [B, S, H]);
          done += B;
          tokens += B * S;
          checkStop();
          await each(h, done, tokens);
          a = b;
        }
    };
    for (let i = state.layer + 1; i < N; i++) {
      await withParameters(streamed, `model.layers.${i}`, () => quantizeLayer(i));
    }
    async function quantizeLayer(i: number): Promise<void> {
      const layer = model.model.layers.at(i);
      opts.onProgress?.({ kind: "layer", layer: i, layers: N });
      const prefix = `model.layers.${i}`;
      const targets: LayerTargets = { linears: new Map(), hessians: new Map(), inputAbsMax: new Map(), sharedGlobalScale };
      for (const [n, m] of layer.namedModules(prefix)) if (m instanceof Linear && isTarget(n)) targets.linears.set(n, m);
      const observers = method === "gptq" ? attachHessianObservers(layer, (n) => targets.linears.has(n), prefix, statistics) : null;
      const ia = scheme.inputActivations;
      const absMax = ia && (!ia.dynamic || ia.dynamic === "local") ? attachInputAbsMax(targets.linears) : null;
      const tracker = trackCoverage(layer, prefix);
      opts.onProgress?.({ kind: "phase", layer: i, phase: "calibrate" });
      try {
        await withMoeCalibration(layer, { calibrateAllExperts, config, fastPath: opts.fastPath ?? true }, async (l) => {
          await eachInput(i, async (h, done, tokens) => {
            await l.call(h);
            opts.onProgress?.({ kind: "samples", layer: i, phase: "calibrate", done, total: samples.length, tokens });
          });
        });
      } finally {
        tracker.remove();
        observers?.remove();
        absMax?.remove();
      }
      if (observers) {
        targets.hessians = observers.stats;
        for (const [n, st] of observers.stats) if (st.allTokenFallback) state.allTokenFallbacks.push(n);
      }
      if (absMax) targets.inputAbsMax = absMax.stats;
      opts.onProgress?.({ kind: "phase", layer: i, phase: "quantize" });
      const { results, fallbacks: fb } = await quantizeLayerLinears(targets, scheme, method, scaleDType, {
        dampening: opts.dampening ?? 0.01,
        blockSize: 128,
        warn,
        layerLabel: `layer ${i}`,
      });
      state.fallbacks.push(...fb);
      targets.hessians.clear();
      // the last layer's outputs feed only unquantized modules (norm, lm_head): no propagation needed
      const next = i < N - 1 ? layerWork.hiddenWriter(i) : null;
      if (next) {
        opts.onProgress?.({ kind: "phase", layer: i, phase: "propagate" });
        try {
          await eachInput(i, async (h, done, tokens) => {
            const out = await layer.call(h);
            assertFinite(out, `layer ${i}: output hidden states (calibration data through the quantized layer)`);
            next.append(out);
            opts.onProgress?.({ kind: "samples", layer: i, phase: "propagate", done, total: samples.length, tokens });
          });
        } catch (e) {
          next.abandon();
          throw e;
        }
      }
      opts.onProgress?.({ kind: "phase", layer: i, phase: "write" });
      const quantizedByWeight = new Map(results.map((r) => [`${r.name}.weight`, r]));
      const layerTensors: NamedRaw[] = [];
      for (const [n] of layer.namedParameters(prefix)) {
        const q = quantizedByWeight.get(n);
        if (q) {
          const tensors = quantizedLinearTensors(q.name, q.weight, scheme.format, scaleDType, q.inputScale);
          assertComplete(
            q.name,
            tensors.map((t) => t.name),
            scheme,
          );
          layerTensors.push(...tensors);
        } else {
          const src = mapping.sources.get(n) ?? n;
          if (!layerTensors.some((t) => t.name === src)) layerTensors.push({ name: src, ...ck.readRaw(src) });
        }
      }
      const cov = tracker.coverage.layers[String(i)] ?? null;
      if (cov) state.coverage[String(i)] = cov;
      const summary = layerSummary(i, cov, results, fb);
      state.layers.push(summary);
      state.layer = i;
      layerWork.saveLayer(state, layerTensors, next, opts.onCheckpoint && ((stage) => opts.onCheckpoint?.(stage, i)));
      opts.onProgress?.({ kind: "layer-done", layer: i, summary });
    }
    // the output, assembled from the finished layers in one order whether or not the run was resumed
    const writer = new ShardedWriter(out.tmp, opts.maxShardBytes ?? DEFAULT_SHARD_BYTES);
    const written = new Set<string>();
    const add = (t: NamedRaw): void => {
      if (written.has(t.name)) return;
      written.add(t.name);
      writer.add(t);
    };
    // tensors copied unchanged go through in pieces: memory does not grow with a 150k-token vocabulary
    const copyRaw = (param: string): void => {
      const src = mapping.sources.get(param) ?? param;
      if (written.has(src)) return;
      written.add(src);
      const { dtype, shape } = ck.info(src);
      writer.addPieces({ name: src, dtype, shape }, ck.rawChunks(src, PIECE_BYTES));
    };
    copyRaw("model.embed_tokens.weight");
    for (let i = 0; i < N; i++) for (const t of work.layerTensors(i)) add(t);
    copyRaw("model.norm.weight");
    copyRaw("lm_head.weight");
    for (const n of mapping.unexpected) copyRaw(n);
    writer.finish();

    const qc = quantizationConfig(scheme, ignored, method === "gptq" ? scheme.weights.actorder : null);
    out.writeFile("config.json", `${JSON.stringify({ ...config.raw, quantization_config: qc }, null, 2)}\n`);
    for (const f of companions.files) out.copyFrom(confinedFile(modelDir, f, asFormatError), f);
    const report: OneshotReport = {
      moecal_version: MOECAL_VERSION,
      model: { name: path.basename(path.resolve(modelDir)), sha256: modelSha },
      scheme: scheme.name,
      method,
      group_size: scheme.weights.groupSize,
      actorder: method === "gptq" ? scheme.weights.actorder : null,
      dataset: { name: path.basename(datasetFile), sha256: datasetSha },
      num_samples: samples.length,
      tokens,
      max_seq_length: maxSeqLength,
      calibrate_all_experts: calibrateAllExperts,
      expert_statistics: {
        setting: formatExpertStatistics(statistics.statistics),
        routed_weight: statistics.routedWeight,
        all_token_fallbacks: state.allTokenFallbacks,
      },
      seed: seedForJson(opts.seed ?? 42),
      ignore,
      coverage: { layers: state.coverage },
      fallbacks: state.fallbacks,
      layers: state.layers,
    };
    await writeReportFiles(out, report);
    // the last point to stop at: once the commit begins, it finishes (the CLI says so)
    await safePoint();
    const output = out.commit();
    work.remove();
    return { output, report, wallSeconds: (performance.now() - t0) / 1000, peakRssMb: peakRssBytes() / 1024 ** 2 };
  } catch (e) {
    out.abort();
    // finished layers are kept for a rerun of the same command; a run that finished none leaves nothing
    if (work?.hasFinishedLayers) warn(`the finished layers are kept in ${work.dir}: rerun the same command to resume after them`);
    else work?.remove();
    throw e;
  } finally {
    await closeSharedGptqPool();
  }
}

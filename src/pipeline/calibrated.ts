/**
 * The calibrated executor: layer by layer (llm-compressor's sequential pipeline), every MoE block
 * swapped for its calibration module while statistics are collected, each finished layer kept in
 * the work folder (a crash costs at most one layer), the output assembled at the end.
 */
import path from "node:path";
import { asUsageError } from "../errors.js";
import { sha256File } from "../io/hash.js";
import { withMoeCalibration } from "../calibration/context.js";
import { withoutRoutedSums } from "../calibration/routed-experts.js";
import { formatExpertStatistics } from "../calibration/expert-statistics.js";
import { type LayerCoverage, trackCoverage } from "../calibration/coverage.js";
import type { LazyRaw, NamedRaw } from "../io/writer.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { WeightRecycler, assertFinite } from "../nn/weights.js";
import { MOECAL_VERSION } from "../paths.js";
import { loadTokenizedSamples, seqLengthFor } from "./dataset.js";
import { gptqPoolSize, warnFallbacks } from "./quantize-layer.js";
import { sharedGptqPool } from "../quantization/gptq-pool.js";
import { recipeMethod, recipeName } from "../quantization/recipe.js";
import { type OneshotReport, layerSummary } from "./report.js";
import { largestLayerWork, seedForJson } from "./preflight.js";
import {
  type LayerOutcome,
  type LayerSteps,
  type PartResult,
  inLinearOrder,
  observeAndQuantize,
  stepSettings,
  wholeLayerTensors,
} from "./layer-steps.js";
import { groupedLayer } from "./expert-groups.js";
import { shardedLayer } from "./sharded-layer.js";
import { type StreamModel, withEmbeddings, withParameters } from "./stream.js";
import { eachInShards, hiddenSizeOf, inputShards } from "./layer-inputs.js";
import { DEFAULT_SHARD_TOKENS, type HiddenWriter, WorkFolder, type WorkState, workFolderBytes } from "./work-folder.js";
import { samplesHash, tokenizerIdentity } from "./work-manifest.js";
import { plan } from "./plan.js";
import { checkPlan, freeDiskBytes } from "./plan-report.js";
import { availableMemory, peakRssBytes } from "../util/memory.js";
import { type Run, finishRun, modelHash, recipeReport, writeCheckpoint } from "./run.js";
import type { OneshotResult } from "./oneshot.js";
import { type Coordinator, openCoordinator } from "../distributed/coordinator.js";
import { connectNats } from "../distributed/nats.js";
import type { NatsConnection } from "@nats-io/transport-node";
import { runManifest } from "../distributed/run-manifest.js";

export async function calibratedRun(run: Run, t0: number): Promise<OneshotResult> {
  const { opts, modelDir, datasetFile, methodOf, family, config, ck, source, model, mapping, ignore, isTarget, warn, out } = run;
  const scheme = run.scheme;
  const method = recipeMethod(run.recipe);
  const byGptq = (n: string): boolean => isTarget(n) && methodOf(n) === "gptq";
  let work: WorkFolder | undefined;
  let remote: Coordinator | undefined;
  let link: NatsConnection | undefined;
  try {
    // a distributed run connects first: a wrong URL or credentials are said before any work
    if (opts.nats) link = await connectNats(opts.nats);
    const settings = stepSettings(run);
    const { calibrateAllExperts, statistics } = settings;
    const dampening = settings.gptq.dampening;
    const shardTokens = opts.shardTokens ?? DEFAULT_SHARD_TOKENS;
    const maxSeqLength = seqLengthFor(opts.maxSeqLength, config.maxPositionEmbeddings);
    const tokenizer = loadTokenizer(modelDir);
    const samples = loadTokenizedSamples(datasetFile, tokenizer, {
      numSamples: opts.numSamples ?? 512,
      maxSeqLength,
      shuffleSeed: opts.seed ?? 42,
    });
    const tokens = samples.reduce((a, s) => a + s.length, 0);
    const thePlan = await plan(
      { ...opts, model: modelDir, dataset: datasetFile, maxSeqLength },
      { samples, opened: { family, config, ck, model, recipe: run.recipe, schemeOf: run.schemeOf, methodOf } },
    );
    // an old work folder is disk the run gets back: --restart deletes it, a resume reuses it
    const freeDisk = freeDiskBytes(out.target) + workFolderBytes(out.target);
    checkPlan(thePlan, { maxMemory: opts.maxMemory ?? availableMemory(), freeDisk, output: out.target });
    opts.onProgress?.({ kind: "plan", plan: thePlan });
    const datasetSha = sha256File(datasetFile, asUsageError);
    // the model's content hash names it in moecal.json and identifies the run for a resume
    const modelSha = await modelHash(run);
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
          scheme: recipeName(run.recipe),
          method,
          group_size: run.schemes.map((s) => s.weights.groupSize),
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
          dampening,
          // a recipe file's GPTQ block size (absent otherwise: a work folder of an earlier version still resumes)
          ...(run.recipe.gptq.blockSize === undefined ? {} : { gptq_block_size: run.recipe.gptq.blockSize }),
          // the shard size, unless the default (likewise)
          ...(shardTokens === DEFAULT_SHARD_TOKENS ? {} : { shard_tokens: shardTokens }),
        },
      },
      opts.restart ?? false,
      N,
    );
    if (link) {
      const manifest = runManifest(opts, { modelDir, modelSha, workDir: work.dir, recipeText: run.recipe.text });
      remote = await openCoordinator(link, manifest, {
        jobTimeout: opts.nats?.jobTimeout,
        fresh: !work.resume,
        onProgress: opts.onProgress,
      });
    }
    const state: WorkState = work.resume ?? { layer: -1, layers: [], coverage: {}, fallbacks: [], allTokenFallbacks: [] };
    opts.onProgress?.({ kind: "start", layers: N, samples: samples.length, tokens });
    if (work.resume) opts.onProgress?.({ kind: "resume", layer: work.resume.layer, layers: N, folder: work.dir });
    // GPTQ workers boot in their own threads while layer 0 calibrates, instead of when the first
    // large layer is quantized (the pool is kept across layers and closed at the end)
    const poolSize = method !== "rtn" ? gptqPoolSize(largestLayerWork(model, byGptq), opts.workers) : 0;
    if (poolSize > 0) void sharedGptqPool(poolSize);

    const streamed: StreamModel = { model, source, mapping, config };
    const H = hiddenSizeOf(model);
    const lengths = samples.map((s) => s.length);
    const layerWork = work;
    // hidden states live in the work folder, not in memory: the embeddings (layer 0's input) first;
    // a run resumed inside layer 0 (run in expert groups) has them already (the work folder checked them)
    if (!work.resume) {
      const w = work.hiddenWriter(-1);
      await withEmbeddings(streamed, async () => {
        for (const ids of samples) w.append(await model.model.embed({ ids: Int32Array.from(ids), shape: [1, ids.length] }));
      });
      w.commit();
    }
    /**
     * The samples' inputs of layer `i`, read back in shards of whole samples of at most
     * --shard-tokens tokens: consecutive samples of one length as one batch [B, S, H] of at most
     * BATCH_TOKENS tokens (a view, no copy), with the number of samples and of tokens up to and including it.
     */
    const eachInput: LayerSteps["eachInput"] = (i, each, endShard) =>
      eachInShards(layerWork.hiddenChunks(i - 1, lengths, H, shardTokens), each, endShard);
    const steps: LayerSteps = {
      run,
      ...settings,
      samples: samples.length,
      shards: inputShards(lengths, shardTokens),
      eachInput,
    };
    // a layer's weights go into the arrays of the layer before: nothing here keeps them past the layer
    const recycler = new WeightRecycler();
    for (let i = state.layer + 1; i < N; i++) {
      opts.onProgress?.({ kind: "layer", layer: i, layers: N });
      const lp = thePlan.layers[i];
      // distributed: every MoE layer in groups (the plan's, or the default number of jobs)
      if (lp?.expert_groups || (remote && lp?.moe)) {
        const groupSize = lp?.expert_groups?.size ?? null;
        const r = await groupedLayer(steps, { i, groupSize, work: layerWork, state, last: i === N - 1, remote });
        finishLayer(i, r.part, r.coverage, r.tensors, r.next);
        r.clean();
      } else if (remote) {
        // distributed: a dense layer's token shards and GPTQ are jobs too
        const r = await shardedLayer(steps, { i, work: layerWork, last: i === N - 1, remote });
        finishLayer(i, r.part, null, r.tensors, r.next);
        r.clean();
      } else await withParameters(streamed, `model.layers.${i}`, () => quantizeLayer(i), recycler);
    }
    async function quantizeLayer(i: number): Promise<void> {
      const layer = model.model.layers.at(i);
      const prefix = `model.layers.${i}`;
      const tracker = trackCoverage(layer, prefix);
      opts.onProgress?.({ kind: "phase", layer: i, phase: "calibrate" });
      let part: PartResult;
      try {
        part = await observeAndQuantize(
          steps,
          layer,
          i,
          () => true,
          async ({ endShard }) => {
            // the pass only takes statistics: its output is discarded (propagation makes the next layer's inputs)
            const moe = { calibrateAllExperts, config, fastPath: opts.fastPath ?? true };
            await withMoeCalibration(layer, moe, async (l) => {
              await withoutRoutedSums(() =>
                eachInput(
                  i,
                  async (h, done, tokens) => {
                    await l.call(h);
                    opts.onProgress?.({ kind: "samples", layer: i, phase: "calibrate", done, total: samples.length, tokens });
                  },
                  endShard,
                ),
              );
            });
            opts.onProgress?.({ kind: "phase", layer: i, phase: "quantize" });
          },
        );
      } finally {
        tracker.remove();
      }
      const { results, fallbacks, allTokenFallbacks } = inLinearOrder(layer, i, part);
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
      const layerTensors = wholeLayerTensors(run, layer, i, results);
      const cov = tracker.coverage.layers[String(i)] ?? null;
      finishLayer(i, { results, fallbacks, allTokenFallbacks }, cov, layerTensors, next);
    }
    /** Record a finished layer in the state and the work folder. */
    function finishLayer(
      i: number,
      part: LayerOutcome,
      cov: LayerCoverage | null,
      tensors: (NamedRaw | LazyRaw)[],
      next: Pick<HiddenWriter, "commit"> | null,
    ): void {
      warnFallbacks(warn, `layer ${i}`, part.fallbacks);
      state.fallbacks.push(...part.fallbacks);
      state.allTokenFallbacks.push(...part.allTokenFallbacks);
      if (cov) state.coverage[String(i)] = cov;
      const summary = layerSummary(i, cov, part.results, part.fallbacks);
      state.layers.push(summary);
      state.layer = i;
      layerWork.saveLayer(state, tensors, next, opts.onCheckpoint && ((stage) => opts.onCheckpoint?.(stage, i)));
      opts.onProgress?.({ kind: "layer-done", layer: i, summary });
    }
    // the output, assembled from the finished layers in one order whether or not the run was resumed
    await writeCheckpoint(run, (i) => layerWork.layerTensors(i));
    const report: OneshotReport = {
      moecal_version: MOECAL_VERSION,
      model: { name: path.basename(path.resolve(modelDir)), sha256: modelSha },
      data_free: false,
      scheme: recipeName(run.recipe),
      recipe: recipeReport(run),
      method,
      group_size: scheme.weights.groupSize,
      actorder: run.recipe.entries[0]?.method === "gptq" ? scheme.weights.actorder : null,
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
    await remote?.close();
    const output = await finishRun(run, report);
    work.remove();
    return { output, report, wallSeconds: (performance.now() - t0) / 1000, peakRssMb: peakRssBytes() / 1024 ** 2 };
  } catch (e) {
    await (remote ?? link)?.close().catch(() => undefined);
    out.abort();
    // finished layers are kept for a rerun of the same command; a run that finished none leaves nothing
    if (work?.hasFinishedLayers) warn(`the finished layers are kept in ${work.dir}: rerun the same command to resume after them`);
    else work?.remove();
    throw e;
  }
}

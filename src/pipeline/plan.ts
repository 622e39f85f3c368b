/**
 * `moecal plan`: what a oneshot run will cost, before it starts, from config.json, the safetensors
 * headers and the tokenized dataset only (no weight is read): per layer, the bytes read and
 * written, the peak memory by part, the floating-point work by phase, and the time from a short
 * measurement of this machine's engine. The formulas and the constants fitted on this project's
 * machine are in docs/performance.md ("The plan's model").
 */
import { DEFAULT_SHARD_BYTES, PIECE_BYTES } from "../io/writer.js";
import { SCRATCH_KEPT_BYTES } from "../engine/scratch.js";
import path from "node:path";
import { isRouterAware, parseExpertStatistics, parseRoutedWeight } from "../calibration/expert-statistics.js";
import { openCheckpoint, sourceQuantization } from "../io/source-format.js";
import { inStoredOnlyLayer, storedName } from "../models/stored-layers.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { readModelConfig } from "../models/registry.js";
import { Linear } from "../nn/layers.js";
import { asTokenMixer } from "../nn/attention.js";
import { type MoeExpert, asMoeBlock } from "../nn/moe.js";
import type { AnyModule } from "../nn/module.js";
import { BUNDLED_DATASET, BUNDLED_MODEL } from "../paths.js";
import { type Scheme, hasStaticActivationScales } from "../quantization/scheme.js";
import { recipeMethod, recipeName } from "../quantization/recipe.js";
import { recipeOf } from "./recipe-options.js";
import { loadTokenizedSamples } from "./dataset.js";
import type { OneshotOptions } from "./oneshot.js";
import { gptqPoolSize } from "./quantize-layer.js";
import { BATCH_TOKENS, DEFAULT_SHARD_TOKENS } from "./work-folder.js";
import { inputShards } from "./layer-inputs.js";
import { resolveRecipe, scaleDTypeOf } from "./preflight.js";
import { gptqWorkerCount } from "../quantization/gptq-pool.js";
import { bytesOf, copiedBytes, layerBytes } from "./plan-bytes.js";
import { type OpenedForPlan, dataFreePlan } from "./plan-data-free.js";
import type { Method } from "../quantization/recipe.js";
import { type ExpertsOfLayer, type PerExpert, fitRetainedGroups, planExpertGroups } from "./plan-groups.js";
import { availableMemory } from "../util/memory.js";
import { LOAD_WORKER_BYTES, loadWorkers } from "../io/load-pool.js";
import { PARALLEL_LOAD_BYTES } from "../nn/weights.js";
import { PLAN_MODEL, gptqFlops, gptqPrepFlops, measureGemm, processBaseline } from "./plan-model.js";
import type { ExpertWork, LayerPlan, NonExpertWork, Plan } from "./plan-types.js";

/** Whether a run needs calibration data: GPTQ (Hessians), or a scheme with static activation scales (FP8's input scale, NVFP4's input global scale). */
export function needsData(method: Method, scheme: Scheme): boolean {
  return method === "gptq" || hasStaticActivationScales(scheme);
}

/** What a caller (oneshot) has already opened or computed, so the plan does not do it again. */
export interface KnownForPlan {
  gemmGflops?: number;
  samples?: number[][];
  /** the model's family, config, checkpoint headers and module tree (weights not loaded), and each Linear's scheme with its group size fitted (null: unquantized) */
  opened?: Omit<OpenedForPlan, "modelDir"> & { methodOf: (linear: string) => Method };
}

/** The plan of `oneshot(opts)`: nothing is read but headers, config and dataset. */
export async function plan(opts: OneshotOptions = {}, known: KnownForPlan = {}): Promise<Plan> {
  const modelDir = opts.model ?? BUNDLED_MODEL;
  const recipe = known.opened?.recipe ?? recipeOf(opts);
  const method = recipeMethod(recipe);
  const dataFree = recipe.entries.every((e) => !needsData(e.method, e.scheme)) && !opts.calibrate;
  const { family, config, ck, model, schemeOf, methodOf } =
    known.opened ??
    (() => {
      // the data-free path reads any checkpoint (an unknown model_type from names and shapes)
      const { family, config } = readModelConfig(modelDir, dataFree ? { generic: () => undefined } : {});
      const model = family.build(config);
      const ignore = [...family.defaultIgnore, ...(opts.ignore ?? []), ...recipe.ignore];
      const { schemeOf, methodOf } = resolveRecipe(
        recipe,
        ignore,
        model,
        opts.groupSize !== undefined,
        () => undefined,
        (n) => storedName(n, config),
      );
      return {
        family,
        config,
        ck: openCheckpoint(modelDir, sourceQuantization(config.raw, `${modelDir}/config.json`), {
          modelPrefix: config.storedModelPrefix,
          keep: (n) => inStoredOnlyLayer(n, config),
          decodeQuantized: true,
        }),
        model,
        recipe,
        schemeOf,
        methodOf,
      };
    })();
  const isTarget = (n: string): boolean => schemeOf(n) !== null;
  const byGptq = (n: string): boolean => isTarget(n) && methodOf(n) === "gptq";
  if (dataFree)
    return dataFreePlan(
      opts,
      { modelDir, family, config, ck, model, recipe, schemeOf },
      { baseline: processBaseline(), workerBytes: PLAN_MODEL.workerBytes },
    );
  const samples =
    known.samples ??
    loadTokenizedSamples(opts.dataset ?? BUNDLED_DATASET, loadTokenizer(modelDir), {
      numSamples: opts.numSamples ?? 512,
      maxSeqLength: opts.maxSeqLength ?? Math.min(2048, config.maxPositionEmbeddings),
      shuffleSeed: opts.seed ?? 42,
    });
  const T = samples.reduce((a, s) => a + s.length, 0);
  const lengths = samples.map((s) => s.length);
  const maxS = Math.max(1, ...samples.map((s) => s.length));
  // a vision-language config keeps the text model's fields under text_config (Hugging Face's convention)
  const raw = ((config.raw.text_config as object | undefined) ?? config.raw) as Record<string, number | undefined>;
  const heads = raw.num_attention_heads ?? 1;
  const embed = model.namedParameters().find(([n]) => n === "model.embed_tokens.weight")?.[1].shape ?? [1, 1];
  const H = embed[1] as number;
  const headDim = raw.head_dim ?? H / heads;
  const K = config.numExpertsPerTok;
  const allExperts = opts.calibrateAllExperts ?? true;
  const routerAware =
    method !== "rtn" &&
    isRouterAware({
      statistics: parseExpertStatistics(opts.expertStatistics ?? "uniform"),
      routedWeight: parseRoutedWeight(opts.routedWeight ?? "one"),
    });
  const firstTarget = model.namedModules().find(([n, m]) => m instanceof Linear && isTarget(n))?.[0];
  const scaleDtype = firstTarget ? scaleDTypeOf(ck, `${firstTarget}.weight`) : "BF16";
  const rate = (known.gemmGflops ?? (await measureGemm())) * 1e9;
  // q/k/v and gate/up read one input: the Hessian observers take its Gram product once
  const allLinearNames = model
    .namedModules()
    .filter(([, m]) => m instanceof Linear)
    .map(([n]) => n);
  const sharesInput = new Set(
    family
      .fusedGroups(allLinearNames)
      .filter((g) => !g.module.endsWith(".experts"))
      .flatMap((g) => g.members.filter(isTarget).slice(1)),
  );
  const baseline = processBaseline();
  const layers: LayerPlan[] = [];
  let output = 0;
  let maxLayerFile = 0;
  const copied = copiedBytes(model, ck);
  const pieceBuffer = Math.min(PIECE_BYTES, Math.max(0, ...copied));
  /** the previous layer's weights: unloaded, but freed only when the garbage collector runs */
  let previousWeights = 0;
  /** the loading workers, once a layer's weights are enough to start them (they stay) */
  let loading = 0;
  let groupedDisk = 0;
  const maxMemory = opts.maxMemory ?? availableMemory();
  const shardTokens = opts.shardTokens ?? DEFAULT_SHARD_TOKENS;
  /** each MoE layer as planned whole, and its experts (for the groups' sizes) */
  const grouped = new Map<number, { whole: LayerPlan; x: ExpertsOfLayer }>();
  for (let i = 0; i < config.numHiddenLayers; i++) {
    const prefix = `model.layers.${i}`;
    const layer = model.getSubmodule(prefix);
    const linears = layer.namedModules(prefix).filter(([, m]) => m instanceof Linear) as [string, Linear][];
    const moe = layer
      .namedModules(prefix)
      .map(([n, m]) => [n, asMoeBlock(m)] as const)
      .find(([, b]) => b !== null);
    const block = moe?.[1] ?? null;
    const expertLinears = new Set(block ? block.routedExperts().flatMap((e) => [e.gate, e.up, e.down]) : []);
    const { read, write, params } = layerBytes(layer, prefix, ck, schemeOf, scaleDtype);
    // floating-point work: products 2 T in out; Gram sums 2 rows in^2; the token mixer's own work (attention's
    // scores and values, 4 heads headDim a (query, key) pair it scores; a linear recurrence per token), as its module reports it
    const mixers = layer
      .namedModules()
      .map(([, m]) => asTokenMixer(m))
      .filter((m) => m !== null);
    let calibrate = mixers.reduce((a, m) => a + m.mixingFlops(lengths), 0);
    let propagate = calibrate;
    let gptq = 0;
    let hessians = 0;
    let gptqMax = 0;
    for (const [n, l] of linears) {
      const target = byGptq(n);
      if (expertLinears.has(l)) continue;
      // members of a fused group after the first read the first's input: its Gram product serves them
      const gram = target && !sharesInput.has(n) ? 2 * T * l.inFeatures ** 2 : 0;
      calibrate += 2 * T * l.inFeatures * l.outFeatures + gram;
      propagate += 2 * T * l.inFeatures * l.outFeatures;
      if (target) {
        const own = gptqFlops(l.outFeatures, l.inFeatures) + gptqPrepFlops(l.inFeatures);
        gptq += own;
        gptqMax = Math.max(gptqMax, own);
        hessians += 4 * l.inFeatures ** 2;
      }
    }
    const nonExpert: NonExpertWork = { input_bytes: 4 * T * H, gptq_flops: gptq, gptq_max_flops: gptqMax, hessian_bytes: hessians };
    // summed shard by shard: the open shard's sums beside the ended shards' (more than one shard)
    if (T > shardTokens) hessians *= 2;
    let activations = 0;
    let experts: Omit<ExpertsOfLayer, "gptq" | "stream"> | null = null;
    let expertWork: ExpertWork | null = null;
    if (block) {
      const before = { calibrate, gptq };
      const E = block.numRoutedExperts;
      const ex = block.routedExperts()[0];
      const Im = ex ? ex.gate.outFeatures : 0;
      const gateName = linears.find(([, l]) => l === ex?.gate)?.[0];
      const expertTarget = gateName !== undefined && byGptq(gateName);
      const rowsGateUp = allExperts ? T * E : T * K;
      // with every expert on every token, the routed down_proj products are left out of calibration (its
      // output is discarded); an expert on its routed rows only computes them in its own call
      calibrate += 2 * rowsGateUp * H * 2 * Im + (allExperts ? 0 : 2 * T * K * Im * H);
      const per = expertMemory(layer, prefix, ex, gateName !== undefined && isTarget(gateName), (m, p) =>
        layerBytes(m, p, ck, schemeOf, scaleDtype),
      );
      // the gate/up Gram product the experts share (the seed's statistics over every token), else one per expert
      let sharedGram = 0;
      if (expertTarget) {
        calibrate += allExperts ? 2 * T * H * H + 2 * T * E * Im * Im : 2 * T * K * (2 * H * H + Im * Im);
        if (routerAware) calibrate += 2 * T * K * (H * H + Im * Im);
        const shared = allExperts && !routerAware;
        gptq += E * (2 * gptqFlops(Im, H) + gptqFlops(H, Im) + gptqPrepFlops(Im)) + (shared ? 1 : E) * gptqPrepFlops(H);
        const copies = routerAware ? 2 : 1;
        per.hessians = 4 * ((shared ? 0 : H * H) + Im * Im) * copies;
        sharedGram = shared ? 4 * H * H : 0;
        hessians += sharedGram + E * per.hessians;
      }
      // in groups, the shared Gram product's GPTQ preparation is kept for every group too: Hinv and its
      // block panels (counted as a second Hinv; the panels are about half of one)
      experts = { count: E, per, shared: 3 * sharedGram };
      propagate += 2 * T * K * 3 * H * Im;
      expertWork = {
        count: E,
        calibrate_flops: calibrate - before.calibrate,
        shared_flops: expertTarget && allExperts && !routerAware ? 2 * T * H * H : 0,
        gptq_flops: gptq - before.gptq,
        routed_flops: 2 * T * K * 3 * H * Im,
        weights: E * 3 * H * Im,
        read_bytes: E * per.read,
        write_bytes: E * per.write,
        stream_bytes: 4 * T * (H + 2 * K),
        routed_rows_bytes: 4 * T * K * H,
        sums_bytes: 4 * T * H,
      };
      // the fast path's per-chunk buffers: gate/up products and the activation of one expert
      activations = 4 * 3 * Im * Math.min(Math.max(maxS, BATCH_TOKENS), 2048);
    }
    // samples are read back from the work folder in chunks; one sample's output is held at a time
    const hidden = 4 * H * (Math.min(T, shardTokens) + maxS);
    // a batch of equal-length samples holds at most max(S, BATCH_TOKENS) tokens
    const batch = Math.max(maxS, BATCH_TOKENS);
    activations += 4 * 3 * batch * Math.max(H, heads * headDim) + 4 * heads * maxS * batch;
    // the attention's scratch arrays (q, k, v twice, the context twice), kept by the pool after it
    const scratch = Math.min(SCRATCH_KEPT_BYTES, 4 * 7 * batch * heads * headDim);
    const weights = linears.filter(([n]) => isTarget(n)).reduce((a, [, l]) => a + l.inFeatures * l.outFeatures, 0);
    const workers = method !== "rtn" ? gptqPoolSize(weights, opts.workers) : 0;
    /**
     * GPTQ's memory per worker at the widest of `ls`: the Hessian's preparation (4 in^2 floats),
     * and 20 bytes per value of its largest job (2,048 rows stacked, or one larger Linear): the
     * job's weight, its copy and column-major copy in the SIMD loops' memory, the codes twice, and
     * the weight of the job queued behind it
     */
    const gptqAt = (ls: [string, Linear][]): number => {
      const maxIn = Math.max(1, ...ls.map(([, l]) => l.inFeatures));
      const values = Math.max(...ls.map(([, l]) => Math.max(2048, l.outFeatures) * l.inFeatures));
      return method !== "rtn" ? Math.max(1, workers) * (16 * maxIn * maxIn + 20 * values) : 0;
    };
    const gptqBytes = gptqAt(linears);
    if (read >= PARALLEL_LOAD_BYTES) loading = loadWorkers() * LOAD_WORKER_BYTES;
    const memory = {
      parameters: params + read,
      outputs: weights + 2 * write,
      hidden_states: hidden,
      activations,
      hessians,
      gptq: gptqBytes,
      workers: workers * PLAN_MODEL.workerBytes + loading,
      retained: previousWeights + pieceBuffer + scratch,
    };
    previousWeights = params + read;
    const peak = baseline + Object.values(memory).reduce((a, b) => a + b, 0);
    const e = PLAN_MODEL.efficiency;
    const last = i === config.numHiddenLayers - 1;
    const seconds =
      PLAN_MODEL.secondsPerLayer +
      PLAN_MODEL.secondsPerSample.calibrate * samples.length +
      calibrate / (rate * e.calibrate) +
      (last ? 0 : PLAN_MODEL.secondsPerSample.propagate * samples.length + propagate / (rate * e.propagate)) +
      gptq / (rate * e.gptq * Math.max(1, Math.min(workers, gptqWorkerCount()))) +
      (3 * write) / PLAN_MODEL.ioBytesPerSecond;
    const lp: LayerPlan = {
      layer: i,
      moe: block !== null,
      read_bytes: read,
      write_bytes: write,
      memory,
      peak_memory_bytes: peak,
      expert_groups: null,
      experts: expertWork,
      non_expert: nonExpert,
      flops: { calibrate, propagate: i < config.numHiddenLayers - 1 ? propagate : 0, gptq },
      seconds,
    };
    if (experts) {
      const gptq = {
        nonExpert: gptqAt(linears.filter(([, l]) => !expertLinears.has(l))),
        expert: gptqAt(linears.filter(([, l]) => expertLinears.has(l))),
      };
      // the streamed calls a group reads (input and routing, a routed sum) and writes, a batch at a time
      const x: ExpertsOfLayer = { ...experts, gptq, stream: 4 * 3 * batch * (H + 2 * K) };
      grouped.set(i, { whole: structuredClone(lp), x });
      planExpertGroups(lp, x, {
        maxMemory,
        ...(opts.expertGroupSize === undefined ? {} : { expertGroupSize: opts.expertGroupSize }),
      });
      // what the next layer may find not yet collected is the last group's weights, not every expert's
      if (lp.expert_groups) previousWeights -= (experts.count - lp.expert_groups.size) * experts.per.parameters;
      // on disk: both streams of calls, two routed sums, and the group files beside the layer's
      if (lp.expert_groups) groupedDisk = Math.max(groupedDisk, 8 * T * (H + 2 * K) + 8 * T * H + write);
    }
    layers.push(lp);
    output += write;
    maxLayerFile += write;
  }
  if (opts.expertGroupSize === undefined) fitRetainedGroups(layers, grouped, maxMemory);
  // the tensors copied unchanged
  output += copied.reduce((a, b) => a + b, 0);
  // every layer's file, and the hidden states a layer reads and writes (two at a time)
  const resumeState = maxLayerFile + 2 * 4 * T * H + groupedDisk;
  // a finished layer's tensors are read back one at a time: at most a weight's codes (a byte per value) or a tensor copied unchanged
  const largestTensor = Math.max(
    0,
    ...model.namedParameters().map(([n, p]) => {
      const linear = n.endsWith(".weight") ? n.slice(0, -".weight".length) : null;
      const codes = linear !== null && isTarget(linear) ? p.shape.reduce((a, b) => a * b, 1) : 0;
      return Math.max(codes, ck.has(n) ? bytesOf(ck.info(n).dtype, ck.info(n).shape) : 0);
    }),
  );
  const phases = {
    embed: (4 + 4 + 4 + 4) * maxS * H,
    assemble: largestTensor + pieceBuffer + Math.min(PIECE_BYTES, output),
  };
  const assembly = Math.min(output, opts.maxShardBytes ?? DEFAULT_SHARD_BYTES);
  return {
    model: path.basename(path.resolve(modelDir)),
    scheme: recipeName(recipe),
    method,
    samples: samples.length,
    tokens: T,
    shards: inputShards(
      samples.map((s) => s.length),
      shardTokens,
    ).length,
    layers,
    peak_memory_bytes: Math.max(...layers.map((l) => l.peak_memory_bytes), baseline + Math.max(phases.embed, phases.assemble)),
    phases,
    baseline_bytes: baseline,
    disk_bytes: output + resumeState + assembly,
    disk: { output, resume_state: resumeState, shard_assembly: assembly },
    seconds: layers.reduce((a, l) => a + l.seconds, 0),
    gemm_gflops: rate / 1e9,
    data_free: null,
  };
}

/** What one routed expert (the first; all are alike) adds to its layer's memory: its weights as read and in float32, its codes when quantized. */
function expertMemory(
  layer: AnyModule,
  prefix: string,
  expert: MoeExpert | undefined,
  quantized: boolean,
  bytes: (module: AnyModule, prefix: string) => { read: number; write: number; params: number },
): PerExpert {
  const name = expert ? layer.namedModules(prefix).find(([, m]) => (m as unknown) === expert)?.[0] : undefined;
  if (!expert || name === undefined) return { parameters: 0, hessians: 0, outputs: 0, read: 0, write: 0 };
  const { read, write, params } = bytes(expert as unknown as AnyModule, name);
  const codes = [expert.gate, expert.up, expert.down].reduce((a, l) => a + l.inFeatures * l.outFeatures, 0);
  // its codes, and its output tensors held twice while its group's file is written
  return { parameters: params + read, hessians: 0, outputs: (quantized ? codes : 0) + 2 * write, read, write };
}

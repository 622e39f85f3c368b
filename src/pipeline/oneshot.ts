import { ONESHOT_OPTIONS, checkOptions } from "./options.js";
import type { Seed } from "../util/numpy-random.js";
import type { Method } from "../quantization/recipe.js";
import { recipeOf } from "./recipe-options.js";
import { closeSharedGptqPool } from "../quantization/gptq-pool.js";
import type { LayerReport, OneshotReport } from "./report.js";
import type { CheckpointStage } from "./work-folder.js";
import type { Plan } from "./plan-types.js";
import { openRun } from "./run.js";
import { calibratedRun } from "./calibrated.js";
import { dataFreeRun } from "./data-free.js";
import { needsData } from "./plan.js";
import type { NatsOptions } from "../distributed/nats.js";
import { UsageError } from "../errors.js";

export interface OneshotOptions {
  model?: string;
  dataset?: string;
  /** a scheme for every Linear ("W4A16"), or a recipe: "PATTERN=SCHEME" entries (and at most one bare scheme for the rest) */
  scheme?: string | string[];
  /** the method of every Linear (default gptq), or also "PATTERN=METHOD" entries: the method of the scheme entry of that PATTERN */
  method?: Method | string[];
  /** an llm-compressor recipe file (YAML or JSON): QuantizationModifier and GPTQModifier stages; excludes scheme, method, groupSize, actorder, dampening */
  recipe?: string;
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
  /**
   * bytes the run may use (default: the machine's available memory): an MoE layer whose plan exceeds
   * it runs in the largest expert groups that fit; a run that cannot fit is refused before it starts
   */
  maxMemory?: number;
  /** run each MoE layer's routed experts this many at a time (default: whole layers when they fit in maxMemory); the same bytes either way */
  expertGroupSize?: number;
  /**
   * tokens per calibration shard, whole samples (default 65536): layer inputs are read in shards, the
   * non-expert Linears' statistics are summed shard by shard, and a distributed run gives each shard
   * of a layer to a job; another size gives slightly other bytes (float32 sums in another order)
   */
  shardTokens?: number;
  /** called inside each layer's checkpoint (tests stop the process there) */
  onCheckpoint?: (stage: CheckpointStage, layer: number) => void;
  warn?: (message: string) => void;
  /**
   * run the calibration forward even where no statistics are needed (RTN with a scheme without
   * static activation scales, which otherwise takes the data-free path)
   */
  calibrate?: boolean;
  /** worker threads that quantize (data-free) or run GPTQ; default one per core (GPTQ: MOECAL_GPTQ_WORKERS when set) */
  workers?: number;
  /**
   * run each MoE layer's expert groups as jobs for `moecal worker` processes on a NATS JetStream
   * server (docs/distributed.md); the output is the same bytes. `jobTimeout`: seconds without a sign
   * of life from a job's worker before the job goes to another (default 60)
   */
  nats?: NatsOptions & { jobTimeout?: number };
}

export type ProgressEvent =
  | { kind: "start"; layers: number; samples: number; tokens: number }
  | { kind: "layer"; layer: number; layers: number }
  | { kind: "phase"; layer: number; phase: "calibrate" | "quantize" | "propagate" | "write" }
  /** `tokens`: tokens of the samples done so far in this phase */
  | { kind: "samples"; layer: number; phase: "calibrate" | "propagate"; done: number; total: number; tokens: number }
  | { kind: "layer-done"; layer: number; summary: LayerReport }
  /** a group of routed experts, [first, end), starts (a layer larger than memory) */
  | { kind: "expert-group"; layer: number; group: number; groups: number; first: number; end: number }
  | { kind: "resume"; layer: number; layers: number; folder: string }
  /** distributed: layer `layer`'s expert groups queued for the workers (`done` of them were done before, by an earlier coordinator's workers) */
  | { kind: "group-jobs"; layer: number; queued: number; done: number }
  /** distributed: a worker finished a group (its files are in the work folder) */
  | { kind: "group-job-done"; layer: number; group: number; worker: string; seconds: number }
  /** distributed: layer `layer`'s token shards queued for the workers, for one phase of its non-expert part */
  | { kind: "shard-jobs"; layer: number; phase: "calibrate" | "propagate" | "output"; queued: number; done: number }
  /** distributed: a worker finished a token shard of the layer's non-expert part */
  | { kind: "shard-job-done"; layer: number; phase: "calibrate" | "propagate" | "output"; shard: number; worker: string; seconds: number }
  /** distributed: a worker quantized a non-expert Linear of the layer (GPTQ) */
  | { kind: "gptq-job-done"; layer: number; linear: string; worker: string; seconds: number }
  /** layer `layer` resumes after `done` of its `groups` expert groups */
  | { kind: "resume-groups"; layer: number; done: number; groups: number }
  /** data-free: resuming after output shards an earlier run finished */
  | { kind: "resume-shards"; shards: number; folder: string }
  /** data-free: source bytes of the tensors written so far (`resumed` of them by an earlier run), of `total` */
  | { kind: "bytes"; done: number; total: number; resumed: number }
  | { kind: "plan"; plan: Plan };

export interface OneshotResult {
  output: string;
  report: OneshotReport;
  /** this run's time and peak memory (not in moecal.json, which a resumed run writes byte for byte as an uninterrupted one) */
  wallSeconds: number;
  peakRssMb: number;
}

/**
 * Quantize a checkpoint and write a compressed-tensors checkpoint atomically. GPTQ, and schemes
 * with static activation scales, calibrate layer by layer with every expert calibrated
 * (calibrated.ts); round-to-nearest with any other scheme needs no data and takes the data-free
 * path (data-free.ts), unless `calibrate` asks for the calibrated one. Both write the same tensors.
 */
export async function oneshot(options: OneshotOptions = {}): Promise<OneshotResult> {
  const t0 = performance.now();
  const opts = checkOptions("oneshot", ONESHOT_OPTIONS, options) as OneshotOptions;
  const recipe = recipeOf(opts);
  const dataFree = recipe.entries.every((e) => !needsData(e.method, e.scheme)) && !opts.calibrate;
  if (dataFree && opts.nats)
    throw new UsageError("--nats distributes calibrated runs' expert groups; this run is data-free (add --calibrate to run it calibrated)");
  const run = openRun(opts, recipe, dataFree);
  try {
    return dataFree ? await dataFreeRun(run, t0) : await calibratedRun(run, t0);
  } finally {
    await closeSharedGptqPool();
  }
}

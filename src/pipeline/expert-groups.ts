/**
 * An MoE layer larger than memory, run one group of routed experts at a time.
 *
 * 1. The non-expert part: one pass over the calibration inputs with only the layer's other weights
 *    loaded observes them (attention, router, shared experts) while the MoE block's input and
 *    routing stream to the work folder (its routed step overridden: nn/moe.ts); they are quantized.
 * 2. A second pass, through the quantized non-expert part, streams the block's input and routing
 *    as propagation sees them.
 * 3. Per group of experts: its weights loaded; the streamed calibration calls replayed through the
 *    group (the same calls, chunks and code as the whole layer: calibrateExperts) for its
 *    statistics; the group quantized, its tensors and its result written (files named by the group);
 *    its routed outputs, from the quantized weights, added to the routed sums of the groups before
 *    it (experts in order: servedExperts); its weights freed; the layer's state saved. A killed run
 *    resumes after the last saved group.
 * 4. A last pass runs the layer with each call's routed sum read back, for the next layer's input.
 *
 * With a RemoteExecutor (remote-groups.ts: workers on NATS), step 3 is its jobs' (quantizeGroupJob,
 * which also writes the group's routed rows), and the coordinator adds every group's rows at once.
 *
 * Every statistic and sum is taken in the whole layer's order, so the output is byte-identical to
 * the layer run whole (test/pipeline/expert-groups.test.ts).
 */
import fs from "node:fs";
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError, UsageError } from "../errors.js";
import { type LayerCoverage, trackCoverage } from "../calibration/coverage.js";
import { type FastState, newFastState } from "../calibration/fast-path.js";
import { calibrateExperts } from "../calibration/routed-experts.js";
import { type LazyRaw, type NamedRaw, encodeSafetensors } from "../io/writer.js";
import type { DecoderLayer } from "../models/family.js";
import { type RoutedInput, routedRows, servedExperts } from "../nn/moe.js";
import { type RemoteExecutor, type GroupSpan, addRemoteSums } from "./remote-groups.js";
import { WeightRecycler, loadParametersAsync, unloadParameters } from "../nn/weights.js";
import { checkStop } from "../util/interrupt.js";
import {
  type Expert,
  type LayerOutcome,
  type LayerSteps,
  type PartResult,
  inLinearOrder,
  moeOf,
  observeAndQuantize,
  quantizedTensors,
} from "./layer-steps.js";
import type { PrepCache } from "./quantize-layer.js";
import { callFiles, callRecords, groupFiles, streamCalls, streamRecords, streamWriter } from "./moe-stream.js";
import { remoteCalibration, removeShardFiles, writeNonExpert } from "./token-shards.js";
import { assembleLayer, layerOutput } from "./group-output.js";
import { type GroupState, readGroupResult, readGroupState, writeGroupResult, writeGroupState } from "./group-state.js";
import { type CheckpointStage, type HiddenWriter, RESTART, type WorkFolder, type WorkState, writeAtomic } from "./work-folder.js";

export interface GroupedLayerResult {
  part: LayerOutcome;
  coverage: LayerCoverage | null;
  tensors: (NamedRaw | LazyRaw)[];
  next: Pick<HiddenWriter, "commit"> | null;
  /** remove the layer's group files (after the layer is saved) */
  clean(): void;
}

/** Jobs per MoE layer of a distributed run when neither the plan nor --expert-group-size sizes its groups, at the least. */
export const DEFAULT_JOB_GROUPS = 8;

/** The group size of a distributed run's layer of `E` experts by default: a job for each of the `idle` workers, and at least DEFAULT_JOB_GROUPS jobs. */
export function jobGroupSize(E: number, idle: number): number {
  return Math.max(1, Math.ceil(E / Math.max(DEFAULT_JOB_GROUPS, idle)));
}

/** Run layer `i` in groups of `groupSize` experts (null: jobGroupSize; a resumed layer keeps the group size it started with). */
export async function groupedLayer(
  steps: LayerSteps,
  job: { i: number; groupSize: number | null; work: WorkFolder; state: WorkState; last: boolean; remote?: RemoteExecutor },
): Promise<GroupedLayerResult> {
  const { run } = steps;
  const { i, work } = job;
  const prefix = `model.layers.${i}`;
  const layer = run.model.model.layers.at(i);
  const { experts, expertOf, linearExpert } = moeOf(layer, prefix);
  const files = groupFiles(work.dir, i);
  const inLayer = (n: string): boolean => n.startsWith(`${prefix}.`);
  const progress = run.opts.onProgress;
  const E = experts.length;
  const size = job.groupSize ?? jobGroupSize(E, (await job.remote?.idleWorkers()) ?? 0);
  const gs: GroupState = readGroupState(files, i, E, job.last) ?? { layer: i, group_size: Math.min(size, E), done: 0 };
  const groups = Math.ceil(E / gs.group_size);
  if (gs.done > 0) progress?.({ kind: "resume-groups", layer: i, done: gs.done, groups });
  const stop = (stage: CheckpointStage): void => run.opts.onCheckpoint?.(stage, i);
  await loadParametersAsync(run.model, run.source, run.mapping, (n) => inLayer(n) && !expertOf.has(n));
  try {
    // 1. the non-expert part, observed and quantized; the block's calibration calls streamed
    progress?.({ kind: "phase", layer: i, phase: "calibrate" });
    const tracker = trackCoverage(layer, prefix);
    let nonExpert: PartResult;
    // distributed: the layer's token shards are jobs, their statistics added here in shard order
    const { remote } = job;
    const shards = remote ? steps.shards : [];
    const routedOf = (): number[] | null => tracker.coverage.layers[String(i)]?.routed ?? null;
    const jobs = remote ? remoteCalibration(remote, i, work.dir, shards, routedOf) : null;
    try {
      nonExpert = await observeAndQuantize(
        steps,
        layer,
        i,
        (n) => !linearExpert.has(n),
        jobs?.pass ?? (({ endShard }) => streamCalls(steps, layer, i, { file: files.calibrate, calibrate: true }, endShard)),
        jobs ? { pool: jobs.pool } : {},
      );
    } finally {
      tracker.remove();
    }
    const routed = routedOf();
    // 2. the block's calls as propagation sees them (not needed after the last layer)
    if (!job.last) {
      progress?.({ kind: "phase", layer: i, phase: "propagate" });
      if (remote) {
        writeNonExpert(files, layer, prefix, nonExpert.results);
        await remote.shards(i, "propagate", shards);
      } else await streamCalls(steps, layer, i, { file: files.propagate, calibrate: false });
    }
    // 3. the groups not done yet
    const l: LayerJob = { i, layer, experts, expertOf, linearExpert, files, gs, last: job.last, stop, shards: shards.length };
    await runGroups(steps, l, job);
    // 4. the layer's output, each call's routed sum read back
    const next = job.last ? null : await layerOutput(steps, { ...l, groups }, work, remote);
    progress?.({ kind: "phase", layer: i, phase: "write" });
    const done = Array.from({ length: groups }, (_, g) =>
      readGroupResult(files, g, g * gs.group_size, Math.min(E, (g + 1) * gs.group_size)),
    );
    const seen = done.flatMap((r) => r.seen);
    return {
      part: inLinearOrder(layer, i, {
        results: [...nonExpert.results, ...done.flatMap((r) => r.results)],
        fallbacks: [...nonExpert.fallbacks, ...done.flatMap((r) => r.fallbacks)],
        allTokenFallbacks: [...nonExpert.allTokenFallbacks, ...done.flatMap((r) => r.all_token_fallbacks)],
      }),
      coverage: routed ? { routed, seen } : null,
      tensors: assembleLayer(steps, layer, i, nonExpert, done, files),
      next,
      clean: () => {
        for (const f of [files.calibrate, files.propagate, files.routed(groups), files.state]) fs.rmSync(f, { force: true });
        removeShardFiles(work.dir, i, shards);
        for (let g = 0; g < groups; g++) for (const f of [files.tensors(g), files.result(g), files.rows(g)]) fs.rmSync(f, { force: true });
      },
    };
  } finally {
    unloadParameters(run.model, inLayer);
  }
}

/** What every group of a layer shares. */
interface LayerJob {
  i: number;
  layer: DecoderLayer;
  experts: Expert[];
  expertOf: Map<string, number>;
  linearExpert: Map<string, number>;
  files: ReturnType<typeof groupFiles>;
  gs: GroupState;
  last: boolean;
  stop: (stage: CheckpointStage) => void;
  /** the layer's calls are in this many shard files (a distributed run's token shards; 0: one file) */
  shards: number;
}

/**
 * The groups of the layer not done yet, in order, each saved when done (its state, and a state.json
 * a rerun resumes from). With a RemoteExecutor, the groups are quantized there first, all at once,
 * and their routed outputs are then added here in order, from the weights their files hold.
 */
async function runGroups(
  steps: LayerSteps,
  l: LayerJob,
  job: { work: WorkFolder; state: WorkState; remote?: RemoteExecutor },
): Promise<void> {
  const E = l.experts.length;
  const size = l.gs.group_size;
  const groups = Math.ceil(E / size);
  const fastState = newFastState();
  const preps: PrepCache = new Map();
  // a group loads into the arrays of the group before (nothing keeps a group's weights past its unload)
  const recycler = new WeightRecycler();
  const spans = Array.from({ length: groups - l.gs.done }, (_, k) => {
    const g = l.gs.done + k;
    return { group: g, first: g * size, end: Math.min(E, (g + 1) * size), size };
  });
  const saved = (done: number): void => {
    const from = l.gs.done;
    l.gs.done = done;
    writeGroupState(l.files, l.gs);
    job.work.saveState(job.state);
    l.stop("group");
    if (from > 0) fs.rmSync(l.files.routed(from), { force: true });
  };
  if (job.remote && spans.length > 0) {
    // the group size kept before the jobs run: a coordinator killed while they run resumes with the same groups
    writeGroupState(l.files, l.gs);
    job.work.saveState(job.state);
    await job.remote.quantize(l.i, spans, { sums: !l.last, shards: l.shards });
    await addRemoteSums(l, spans, l.shards);
    saved(groups);
    for (const s of spans) fs.rmSync(l.files.rows(s.group), { force: true });
    return;
  }
  for (const { group: g, first: a, end: b } of spans) {
    steps.run.opts.onProgress?.({ kind: "expert-group", layer: l.i, group: g, groups, first: a, end: b });
    await runGroup(steps, { ...l, a, b, fastState, preps, recycler, keepWorkers: b < E });
    saved(g + 1);
  }
}

interface GroupJob extends LayerJob {
  a: number;
  b: number;
  /** the layer's fast-path state, kept across its groups */
  fastState: FastState;
  /** GPTQ preparations of Hessians the groups share */
  preps: PrepCache;
  /** a worker's own temporary names for the group's files (privateWriter's tag) */
  tag?: string;
  /** the arrays of the layer's groups before, for this one's weights */
  recycler?: WeightRecycler;
  /** a later group of the layer follows in this process: GPTQ's workers are kept for it (the same widths) */
  keepWorkers?: boolean;
}

/** Whether expert `e` (of a parameter or Linear; undefined: none) is one of the group's. */
const inGroup = (j: GroupJob, e: number | undefined): boolean => e !== undefined && e >= j.a && e < j.b;

/**
 * Experts [a, b): their weights loaded, observed over the streamed calibration calls, quantized, and
 * written as the group's tensors and result (files named by the group); then, but for the last
 * layer, their routed outputs (from the quantized weights) added to the sums; their weights freed.
 */
async function runGroup(steps: LayerSteps, j: GroupJob): Promise<void> {
  const { run } = steps;
  const g = j.a / j.gs.group_size;
  const params = (n: string): boolean => inGroup(j, j.expertOf.get(n));
  await loadParametersAsync(run.model, run.source, run.mapping, params, "", j.recycler);
  try {
    await quantizeGroup(steps, j, g);
    j.stop("group-tensors");
    if (!j.last) await sumGroup(j, j.experts.slice(j.a, j.b), g);
    j.stop("group-sums");
  } finally {
    unloadParameters(run.model, params, "", j.recycler);
  }
}

/** Observe, quantize and write experts [a, b) (loaded): their weights become the dequantized values. */
async function quantizeGroup(steps: LayerSteps, j: GroupJob, g: number): Promise<void> {
  const { run } = steps;
  const members = j.experts.slice(j.a, j.b);
  // the gate/up statistics every expert shares (all-token statistics) are summed by the first group
  // and shared by the later ones, as is their GPTQ preparation; per-expert statistics are the group's own
  const fastState = j.fastState;
  fastState.routed = null;
  fastState.down = null;
  const tracker = trackCoverage(j.layer, `model.layers.${j.i}`);
  let part: PartResult;
  try {
    part = await observeAndQuantize(
      steps,
      j.layer,
      j.i,
      (n) => inGroup(j, j.linearExpert.get(n)),
      async () => {
        for await (const input of callRecords(callFiles(j.files, "calibrate", j.shards))) {
          checkStop();
          const step = {
            ...input,
            experts: members,
            first: j.a,
            calibrateAllExperts: steps.calibrateAllExperts,
            fastPath: steps.fastPath,
            fastState,
          };
          await calibrateExperts(step, null);
        }
        fastState.gateUpComplete = fastState.sharedGateUp !== null;
      },
      { preps: j.preps, keepWorkers: j.keepWorkers === true },
    );
  } finally {
    tracker.remove();
  }
  const seen = tracker.coverage.layers[String(j.i)]?.seen ?? [];
  const tensors = part.results.map((q) => quantizedTensors(run, q));
  writeAtomic(j.files.tensors(g), encodeSafetensors(tensors.flat()), j.tag);
  writeGroupResult(
    j.files,
    g,
    {
      first: j.a,
      end: j.b,
      results: part.results.map((q, k) => ({
        name: q.name,
        expert: j.linearExpert.get(q.name) as number,
        loss: q.loss,
        tensors: (tensors[k] as NamedRaw[]).map((t) => t.name),
      })),
      fallbacks: part.fallbacks,
      all_token_fallbacks: part.allTokenFallbacks,
      seen: Array.from({ length: j.b - j.a }, (_, k) => seen[j.a + k] ?? 0),
      absmax: part.absMax,
    },
    j.tag,
  );
}

/** The routed sums after group g: those after the groups before it, plus this group's experts on their routed tokens. */
async function sumGroup(j: GroupJob, members: Expert[], g: number): Promise<void> {
  const w = streamWriter(j.files.routed(g + 1));
  try {
    const before = g > 0 ? streamRecords(j.files.routed(g)) : null;
    for await (const input of streamRecords(j.files.propagate)) {
      checkStop();
      const prev = before ? await before.next() : null;
      if (prev?.done) throw new CheckpointFormatError(`${j.files.routed(g)}: fewer calls than ${j.files.propagate}; ${RESTART}`);
      const sum = prev ? (prev.value as RoutedInput).flat : Tensor.zeros([input.flat.dim(0), input.flat.dim(1)]);
      await servedExperts(input, members, j.a, sum);
      w.append(sum);
    }
    await before?.return(undefined);
    w.commit();
  } catch (e) {
    w.abandon();
    throw e;
  }
}

/** A group's weighted routed outputs over the propagation calls, for the process that adds the sums (experts loaded and quantized). */
async function writeRoutedRows(j: GroupJob, g: number): Promise<void> {
  const w = streamWriter(j.files.rows(g), j.tag);
  try {
    const members = j.experts.slice(j.a, j.b);
    for await (const input of callRecords(callFiles(j.files, "propagate", j.shards))) {
      checkStop();
      w.append(await routedRows(input, members, j.a));
    }
    w.commit();
  } catch (e) {
    w.abandon();
    throw e;
  }
}

/**
 * One group's own work, for a worker process: experts [first, end) of layer `i` loaded, observed over
 * the layer's calibration calls streamed to the work folder `dir`, quantized, and their tensors and
 * result written there (files named by the group: a job done twice writes the same bytes).
 */
export async function quantizeGroupJob(
  steps: LayerSteps,
  dir: string,
  i: number,
  span: GroupSpan & { sums: boolean; shards: number; tag: string },
): Promise<void> {
  const { run } = steps;
  const layer = run.model.model.layers.at(i);
  const moe = moeOf(layer, `model.layers.${i}`);
  const E = moe.experts.length;
  if (span.first !== span.group * span.size || span.end !== Math.min(E, span.first + span.size))
    throw new UsageError(`layer ${i} has ${E} experts: group ${span.group} of ${span.size} is not experts ${span.first}-${span.end - 1}`);
  const j: GroupJob = {
    i,
    layer,
    ...moe,
    files: groupFiles(dir, i),
    gs: { layer: i, group_size: span.size, done: 0 },
    last: false,
    stop: () => undefined,
    shards: span.shards,
    a: span.first,
    b: span.end,
    fastState: newFastState(),
    preps: new Map(),
    tag: span.tag,
  };
  const params = (n: string): boolean => inGroup(j, j.expertOf.get(n));
  await loadParametersAsync(run.model, run.source, run.mapping, params);
  try {
    await quantizeGroup(steps, j, span.group);
    if (span.sums) await writeRoutedRows(j, span.group);
  } finally {
    unloadParameters(run.model, params);
  }
}

/**
 * What a distributed run (`oneshot --nats`, docs/distributed.md) of a plan would take with N
 * workers: per layer, its jobs, a wave of N at a time (token shards of the non-expert part in
 * three phases, or a dense layer's two; the non-expert Linears' GPTQ; an MoE layer's expert groups,
 * each recomputing the gate/up Gram product the experts share), the coordinator's own part (adding
 * the shards' statistics and the groups' routed rows, writing the layer), and the bytes each layer
 * moves through the shared file system. Rates are the plan's (PLAN_MODEL, the GEMM
 * rate it measured), taken as each worker's: a worker on a faster host only shortens its jobs.
 */
import { UsageError } from "../errors.js";
import { gptqWorkerCount } from "../quantization/gptq-pool.js";
import { jobGroupSize } from "./expert-groups.js";
import { PLAN_MODEL } from "./plan-model.js";
import type { LayerPlan, Plan } from "./plan-types.js";
import { size, time } from "./plan-report.js";

export interface DistributedLayer {
  layer: number;
  /** expert group jobs (0: a dense layer) */
  groups: number;
  /** token-shard jobs a phase of the non-expert part (calibrate; but in the last layer, propagate and output too) */
  shards: number;
  /** one group job's seconds; the calibrate, propagate and output jobs' of one shard together */
  job_seconds: number;
  shard_seconds: number;
  /** the wall time of the other Linears' GPTQ jobs (a Linear a job) */
  gptq_seconds: number;
  /** the wall time of the layer's jobs on `workers` workers: the shards' phases, the other Linears' GPTQ, the groups */
  jobs_seconds: number;
  /** the coordinator's own part: the shards' statistics and the groups' routed rows added, the layer's files written */
  coordinator_seconds: number;
  seconds: number;
  /** through the shared file system: the inputs, calls, statistics and outputs of the shards, the Hessians of the GPTQ jobs, and the group jobs' bytes */
  moved_bytes: number;
}

export interface DistributedPlan {
  workers: number;
  /** GPTQ threads per worker the estimate assumed */
  threads: number;
  layers: DistributedLayer[];
  seconds: number;
  moved_bytes: number;
  /** the same run on one machine (the plan's estimate), for comparison */
  local_seconds: number;
}

/** The distributed estimate of `p` with `workers` workers of `threads` GPTQ threads each (default: this machine's). */
export function distributedPlan(p: Plan, o: { workers: number; threads?: number }): DistributedPlan {
  if (!Number.isInteger(o.workers) || o.workers < 1) throw new UsageError(`workers must be an integer >= 1, got ${String(o.workers)}`);
  if (p.data_free) throw new UsageError("a data-free run is not distributed (oneshot --nats runs calibrated MoE layers)");
  const threads = o.threads ?? gptqWorkerCount();
  const layers = p.layers.map((l) => distributedLayer(p, l, o.workers, threads));
  const saved = layers.reduce((a, d) => a + (p.layers[d.layer] as LayerPlan).seconds - d.seconds, 0);
  return {
    workers: o.workers,
    threads,
    layers,
    seconds: p.seconds - saved,
    moved_bytes: layers.reduce((a, d) => a + d.moved_bytes, 0),
    local_seconds: p.seconds,
  };
}

function distributedLayer(p: Plan, l: LayerPlan, workers: number, threads: number): DistributedLayer {
  const x = l.experts;
  const ne = l.non_expert;
  const rate = p.gemm_gflops * 1e9;
  const e = PLAN_MODEL.efficiency;
  const io = PLAN_MODEL.ioBytesPerSecond;
  const waves = (n: number): number => Math.ceil(n / workers);
  const last = l.flops.propagate === 0;
  const g = x ? groupJobs(p, l, x, workers, threads) : { groups: 0, job: 0, propagation: 0, rows: 0, moved: 0 };
  // a token shard: its share of the non-expert part's passes; calibrate reads its inputs and writes its
  // statistics (and an MoE layer's calls), propagate (an MoE layer's) reads its inputs and writes its
  // calls, output reads its inputs (and an MoE layer's routed sums) and writes its outputs
  const S = Math.max(1, p.shards);
  const sample = PLAN_MODEL.secondsPerSample;
  const hidden = ne.input_bytes;
  const stream = x?.stream_bytes ?? 0;
  const calibrate = (l.flops.calibrate - (x?.calibrate_flops ?? 0)) / (rate * e.calibrate) + sample.calibrate * p.samples;
  const propagate = last ? 0 : (l.flops.propagate - (x?.routed_flops ?? 0)) / (rate * e.propagate) + sample.propagate * p.samples;
  const passes = x ? 2 : 1;
  const outputIo = x ? 3 * hidden + hidden + g.propagation : 2 * hidden;
  const shard = (calibrate + (hidden + stream) / io) / S + ne.hessian_bytes / io + (last ? 0 : (passes * propagate + outputIo / io) / S);
  // the non-expert Linears' GPTQ, a job each: the largest bounds the wall; their Hessians written and read
  const gptq = Math.max(ne.gptq_max_flops, ne.gptq_flops / workers) / (rate * e.gptq) + (2 * ne.hessian_bytes) / io;
  const jobs = waves(S) * shard + gptq + waves(g.groups) * g.job;
  // the coordinator: every shard's statistics read, an MoE layer's routed rows read and sums written, the layer written
  const coordinator =
    PLAN_MODEL.secondsPerLayer +
    (S * ne.hessian_bytes + (last || !x ? 0 : g.propagation + g.rows + 2 * x.sums_bytes) + 3 * l.write_bytes) / io;
  const shardBytes = hidden + stream + 2 * S * ne.hessian_bytes + (last ? 0 : outputIo);
  return {
    layer: l.layer,
    groups: g.groups,
    shards: S,
    job_seconds: g.job,
    shard_seconds: shard,
    gptq_seconds: gptq,
    jobs_seconds: jobs,
    coordinator_seconds: coordinator,
    seconds: coordinator + jobs,
    moved_bytes: g.moved + shardBytes + 2 * ne.hessian_bytes,
  };
}

/** An MoE layer's expert group jobs: how many, one's seconds, and what they move. */
function groupJobs(p: Plan, l: LayerPlan, x: NonNullable<LayerPlan["experts"]>, workers: number, threads: number) {
  const rate = p.gemm_gflops * 1e9;
  const e = PLAN_MODEL.efficiency;
  const io = PLAN_MODEL.ioBytesPerSecond;
  const groupSize = l.expert_groups?.size ?? jobGroupSize(x.count, workers);
  const groups = Math.ceil(x.count / groupSize);
  // in every layer but the last: the propagation calls streamed (read by every group job), the routed
  // rows (each routed pair's weighted output: written by the jobs, read by the coordinator)
  const last = l.flops.propagate === 0;
  const propagation = last ? 0 : x.stream_bytes;
  const rows = last ? 0 : x.routed_rows_bytes;
  const gptq = x.gptq_flops / (rate * e.gptq * Math.max(1, threads));
  // a group job: its share of the experts' arithmetic (its routed outputs included), the shared Gram
  // product recomputed, the streamed calls read, its weights read and tensors written
  const routed = last ? 0 : x.routed_flops / (rate * e.propagate);
  const job =
    ((x.calibrate_flops - x.shared_flops) / (rate * e.calibrate) + gptq + routed) / groups +
    x.shared_flops / (rate * e.calibrate) +
    (x.stream_bytes + propagation + (x.read_bytes + x.write_bytes + rows) / groups) / io;
  const moved = groups * (x.stream_bytes + propagation) + x.read_bytes + 2 * x.write_bytes + 2 * rows;
  return { groups, job, propagation, rows, moved };
}

/** The estimate as text: per MoE layer, then in total. */
export function formatDistributed(d: DistributedPlan): string {
  const most = Math.max(0, ...d.layers.map((l) => l.groups));
  const idle = most > 0 && most < d.workers ? most : 0;
  return [
    `distributed (oneshot --nats) with ${d.workers} worker(s) of ${d.threads} GPTQ thread(s), per layer:`,
    "layer  shards  a shard    groups  a group    jobs' wall  coordinator  moved",
    ...d.layers.map(
      (l) =>
        `${String(l.layer).padStart(5)}  ${String(l.shards).padStart(6)}  ${time(l.shard_seconds).padStart(9)}  ${String(l.groups).padStart(6)}  ${time(l.job_seconds).padStart(9)}  ${time(l.jobs_seconds).padStart(10)}  ${time(l.coordinator_seconds).padStart(11)}  ${size(l.moved_bytes)}`,
    ),
    `about ${time(d.seconds)} (on one machine: ${time(d.local_seconds)}); ${size(d.moved_bytes)} through the shared folder`,
    ...(idle ? [`${d.workers} workers, at most ${idle} jobs a layer: --expert-group-size gives each worker a job (N experts a job)`] : []),
  ].join("\n");
}

/**
 * What a distributed run (`oneshot --nats`, docs/distributed.md) of a plan would take with N
 * workers: per MoE layer, its jobs, a wave of N at a time (token shards of the non-expert part in
 * three phases, the other Linears' GPTQ, the expert groups, each recomputing the gate/up Gram
 * product the experts share), the coordinator's own part (adding the shards' statistics and the
 * groups' routed rows, writing the layer), and the bytes each layer moves through the shared file system. Rates are the plan's (PLAN_MODEL, the GEMM
 * rate it measured), taken as each worker's: a worker on a faster host only shortens its jobs.
 */
import { UsageError } from "../errors.js";
import { gptqWorkerCount } from "../quantization/gptq-pool.js";
import { jobGroupSize } from "./expert-groups.js";
import { type LayerPlan, PLAN_MODEL, type Plan } from "./plan.js";
import { size, time } from "./plan-report.js";

export interface DistributedLayer {
  layer: number;
  /** expert group jobs */
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
  const layers = p.layers.flatMap((l) => (l.experts ? [distributedLayer(p, l, o.workers, threads)] : []));
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
  const x = l.experts as NonNullable<LayerPlan["experts"]>;
  const rate = p.gemm_gflops * 1e9;
  const e = PLAN_MODEL.efficiency;
  const groupSize = l.expert_groups?.size ?? jobGroupSize(x.count, workers);
  const groups = Math.ceil(x.count / groupSize);
  const io = PLAN_MODEL.ioBytesPerSecond;
  // in every layer but the last: the propagation calls streamed (read by every group job), the routed
  // rows (each routed pair's weighted output: written by the jobs, read by the coordinator) and the sums
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
  // a token shard: its share of the non-expert part's passes; calibrate reads its inputs and writes its
  // calls and statistics, propagate reads its inputs and writes its calls, output reads its inputs and
  // routed sums and writes its outputs (the layer's hidden states are as large as its sums)
  const S = Math.max(1, p.shards);
  const sample = PLAN_MODEL.secondsPerSample;
  const hidden = x.sums_bytes;
  const calibrate = (l.flops.calibrate - x.calibrate_flops) / (rate * e.calibrate) + sample.calibrate * p.samples;
  const propagate = last ? 0 : (l.flops.propagate - x.routed_flops) / (rate * e.propagate) + sample.propagate * p.samples;
  const shard =
    (calibrate + (hidden + x.stream_bytes) / io) / S +
    x.other_hessian_bytes / io +
    (last ? 0 : (2 * propagate + (hidden + propagation) / io + (3 * hidden) / io) / S);
  // the other Linears' GPTQ, a job each: the largest bounds the wall; their Hessians written and read
  const otherGptq = Math.max(x.other_gptq_max_flops, x.other_gptq_flops / workers) / (rate * e.gptq) + (2 * x.other_hessian_bytes) / io;
  const waves = (n: number): number => Math.ceil(n / workers);
  const jobs = waves(S) * shard + otherGptq + waves(groups) * job;
  const coordinator =
    PLAN_MODEL.secondsPerLayer + (S * x.other_hessian_bytes + (last ? 0 : propagation + rows + 2 * x.sums_bytes) + 3 * l.write_bytes) / io;
  const shardBytes = hidden + x.stream_bytes + 2 * S * x.other_hessian_bytes + (last ? 0 : 4 * hidden + propagation);
  return {
    layer: l.layer,
    groups,
    shards: S,
    job_seconds: job,
    shard_seconds: shard,
    gptq_seconds: otherGptq,
    jobs_seconds: jobs,
    coordinator_seconds: coordinator,
    seconds: coordinator + jobs,
    moved_bytes:
      groups * (x.stream_bytes + propagation) + x.read_bytes + 2 * x.write_bytes + 2 * rows + shardBytes + 2 * x.other_hessian_bytes,
  };
}

/** The estimate as text: per MoE layer, then in total. */
export function formatDistributed(d: DistributedPlan): string {
  const most = Math.max(0, ...d.layers.map((l) => l.groups));
  const idle = most > 0 && most < d.workers ? most : 0;
  return [
    `distributed (oneshot --nats) with ${d.workers} worker(s) of ${d.threads} GPTQ thread(s), per MoE layer:`,
    "layer  shards  a shard    groups  a group    jobs' wall  coordinator  moved",
    ...d.layers.map(
      (l) =>
        `${String(l.layer).padStart(5)}  ${String(l.shards).padStart(6)}  ${time(l.shard_seconds).padStart(9)}  ${String(l.groups).padStart(6)}  ${time(l.job_seconds).padStart(9)}  ${time(l.jobs_seconds).padStart(10)}  ${time(l.coordinator_seconds).padStart(11)}  ${size(l.moved_bytes)}`,
    ),
    `about ${time(d.seconds)} (on one machine: ${time(d.local_seconds)}); ${size(d.moved_bytes)} through the shared folder`,
    ...(idle ? [`${d.workers} workers, at most ${idle} jobs a layer: --expert-group-size gives each worker a job (N experts a job)`] : []),
  ].join("\n");
}

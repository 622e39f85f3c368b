/**
 * What a distributed run (`oneshot --nats`, docs/distributed.md) of a plan would take with N
 * workers: per MoE layer, the coordinator's part (the layer's non-expert work as in a local run, the
 * extra pass of a grouped layer, adding the groups' routed rows to the sums) and the groups' jobs, a
 * wave of N at a time, each recomputing the gate/up Gram product the experts share; and the bytes
 * each layer moves through the shared file system. Rates are the plan's (PLAN_MODEL, the GEMM
 * rate it measured), taken as each worker's: a worker on a faster host only shortens its jobs.
 */
import { UsageError } from "../errors.js";
import { gptqWorkerCount } from "../quantization/gptq-pool.js";
import { jobGroupSize } from "./expert-groups.js";
import { type LayerPlan, PLAN_MODEL, type Plan } from "./plan.js";
import { size, time } from "./plan-report.js";

export interface DistributedLayer {
  layer: number;
  /** jobs (expert groups) */
  groups: number;
  /** one job's seconds, and the layer's jobs' wall time on `workers` workers */
  job_seconds: number;
  jobs_seconds: number;
  coordinator_seconds: number;
  seconds: number;
  /** through the shared file system: the streamed calls each job reads, the experts' weights read and written, the groups' files read back */
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
  // in every layer but the last: the propagation calls streamed (read by every job), the routed rows
  // (each routed pair's weighted output: written by the jobs, read by the coordinator) and the sums
  const last = l.flops.propagate === 0;
  const propagation = last ? 0 : x.stream_bytes;
  const rows = last ? 0 : x.routed_rows_bytes;
  const gptq = x.gptq_flops / (rate * e.gptq * Math.max(1, threads));
  // a job: its share of the experts' arithmetic (its routed outputs included), the shared Gram
  // product recomputed, the streamed calls read, its weights read and tensors written
  const routed = last ? 0 : x.routed_flops / (rate * e.propagate);
  const job =
    ((x.calibrate_flops - x.shared_flops) / (rate * e.calibrate) + gptq + routed) / groups +
    x.shared_flops / (rate * e.calibrate) +
    (x.stream_bytes + propagation + (x.read_bytes + x.write_bytes + rows) / groups) / io;
  const jobs = Math.ceil(groups / workers) * job;
  // the coordinator: the layer without its experts' work, one more pass through the non-expert part
  // (the streamed propagation calls), and one pass adding every group's rows to the sums
  const propagate = last
    ? 0
    : (l.flops.propagate - x.routed_flops) / (rate * e.propagate) + PLAN_MODEL.secondsPerSample.propagate * p.samples;
  const coordinator =
    l.seconds -
    (x.calibrate_flops / (rate * e.calibrate) + gptq + routed) +
    propagate +
    (last ? 0 : (propagation + rows + 2 * x.sums_bytes) / io);
  return {
    layer: l.layer,
    groups,
    job_seconds: job,
    jobs_seconds: jobs,
    coordinator_seconds: coordinator,
    seconds: coordinator + jobs,
    moved_bytes: groups * (x.stream_bytes + propagation) + x.read_bytes + 2 * x.write_bytes + 2 * rows,
  };
}

/** The estimate as text: per MoE layer, then in total. */
export function formatDistributed(d: DistributedPlan): string {
  const most = Math.max(0, ...d.layers.map((l) => l.groups));
  const idle = most > 0 && most < d.workers ? most : 0;
  return [
    `distributed (oneshot --nats) with ${d.workers} worker(s) of ${d.threads} GPTQ thread(s), per MoE layer:`,
    "layer  jobs  a job      jobs' wall  coordinator  moved",
    ...d.layers.map(
      (l) =>
        `${String(l.layer).padStart(5)}  ${String(l.groups).padStart(4)}  ${time(l.job_seconds).padStart(9)}  ${time(l.jobs_seconds).padStart(10)}  ${time(l.coordinator_seconds).padStart(11)}  ${size(l.moved_bytes)}`,
    ),
    `about ${time(d.seconds)} (on one machine: ${time(d.local_seconds)}); ${size(d.moved_bytes)} through the shared folder`,
    ...(idle ? [`${d.workers} workers, at most ${idle} jobs a layer: --expert-group-size gives each worker a job (N experts a job)`] : []),
  ].join("\n");
}

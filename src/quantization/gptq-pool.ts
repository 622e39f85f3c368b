import os from "node:os";
import { WorkerPool, ownedBuffers } from "../util/worker-pool.js";
import { type GptqPrep, type GptqResult, gptqWithPrep, prepareGptq } from "./gptq.js";
import type { ScaleDType } from "./params.js";
import type { QuantArgs } from "./scheme.js";

export interface GptqJob {
  weight: Float32Array;
  out: number;
  /** a prepared Hessian (shared by several jobs; its block size is the job's), or the Hessian to prepare in the worker */
  prep: GptqPrep | { hessian: Float32Array; inF: number; dampening: number; blockSize: number };
  args: QuantArgs;
  dtype: ScaleDType;
  name: string;
  /** NVFP4: each row's global scale */
  globalScale?: Float32Array;
}

/** GPTQ worker threads: `workers` (the run's option), else MOECAL_GPTQ_WORKERS, else one per core; 0 runs GPTQ on the main thread. */
export function gptqWorkerCount(workers?: number): number {
  if (workers !== undefined) return workers;
  const env = process.env.MOECAL_GPTQ_WORKERS;
  const n = env === undefined || env === "" ? NaN : Number(env);
  return Number.isInteger(n) && n >= 0 ? n : os.availableParallelism();
}

/** GPTQ's column loop is single-threaded JavaScript; rows of different Linears are independent: jobs on worker threads. */
export type GptqPool = WorkerPool<GptqJob, GptqResult>;

const GPTQ_KIND = {
  what: "GPTQ",
  script: new URL("./gptq-worker.js", import.meta.url),
  run: runGptqJob,
  transfer: (job: GptqJob): ArrayBuffer[] => ownedBuffers([job.weight, ...("hessian" in job.prep ? [job.prep.hessian] : [])]),
  // the next job waits in the worker: it starts without waiting for the main thread's reply handling and stacking
  depth: 2,
};

/** A GPTQ pool of `size` workers (0: jobs on this thread). */
export function gptqPool(size = gptqWorkerCount()): GptqPool {
  return new WorkerPool(size, GPTQ_KIND);
}

let shared: GptqPool | null = null;

/**
 * The process's pool of `size` workers, kept between calls (oneshot quantizes layer after layer:
 * workers start once and stay warm). A different size replaces it; size 0 is a pool without workers.
 */
export async function sharedGptqPool(size: number): Promise<GptqPool> {
  if (size === 0) return gptqPool(0);
  if (shared?.size === size) return shared;
  await closeSharedGptqPool();
  shared = gptqPool(size);
  return shared;
}

/**
 * Replace the shared pool's workers by fresh ones of the same number, when `pool` is the shared pool
 * (its jobs ended): a worker keeps the WebAssembly memory its largest job grew (it never shrinks)
 * and, idle, the garbage of its last jobs, which the plan counts in that layer only (measured:
 * docs/performance.md). The new workers start while the caller goes on.
 */
export async function renewSharedGptqPool(pool: object): Promise<void> {
  if (shared === null || pool !== shared) return;
  const { size } = shared;
  await closeSharedGptqPool();
  shared = gptqPool(size);
}

/** Stop the shared pool's workers (idle workers do not hold the process open, so this is tidiness). */
export async function closeSharedGptqPool(): Promise<void> {
  const p = shared;
  shared = null;
  if (p) await p.close();
}

/**
 * Run one job where we are (main thread or worker): prepare its Hessian if needed, then GPTQ.
 * The job owns its weight array: the dequantized result is written over it.
 */
export async function runGptqJob(j: GptqJob): Promise<GptqResult> {
  const p = j.prep;
  const prep = "hessian" in p ? await prepareGptq(p.hessian, p.inF, j.args.actorder, j.name, p.dampening, p.blockSize) : p;
  return gptqWithPrep(j.weight, j.out, prep, j.args, j.dtype, j.name, j.weight, j.globalScale);
}

import os from "node:os";
import { inFlight } from "../util/interrupt.js";
import { Worker } from "node:worker_threads";
import {
  CheckpointFormatError,
  ConfigError,
  InternalError,
  IoError,
  MoecalError,
  NumericalError,
  UsageError,
  WeightMappingError,
} from "../errors.js";
import { type GptqPrep, type GptqResult, gptqWithPrep, prepareGptq } from "./gptq.js";
import type { ScaleDType } from "./params.js";
import type { QuantArgs } from "./scheme.js";

export interface GptqJob {
  id: number;
  weight: Float32Array;
  out: number;
  /** a prepared Hessian (shared by several jobs), or the Hessian to prepare in the worker */
  prep: GptqPrep | { hessian: Float32Array; inF: number; dampening: number };
  args: QuantArgs;
  dtype: ScaleDType;
  name: string;
  blockSize: number;
  /** NVFP4: each row's global scale */
  globalScale?: Float32Array;
}

export type GptqJobReply = { id: number; result: GptqResult } | { id: number; error: { name: string; code: string; message: string } };

/** GPTQ worker threads: MOECAL_GPTQ_WORKERS, else one per core; 0 runs GPTQ on the main thread. */
export function gptqWorkerCount(): number {
  const env = process.env.MOECAL_GPTQ_WORKERS;
  const n = env === undefined || env === "" ? NaN : Number(env);
  return Number.isInteger(n) && n >= 0 ? n : os.availableParallelism();
}

/**
 * Runs GPTQ jobs on worker threads (GPTQ's column loop is single-threaded JavaScript; rows of
 * different Linears are independent). At most one job per worker is in flight; `submit`
 * resolves when a worker is free to take the next job, so callers build inputs lazily.
 */
export class GptqPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly waiting: ((w: Worker) => void)[] = [];
  private readonly pending = new Map<number, { resolve: (r: GptqResult) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private previous: Promise<void> = Promise.resolve();

  constructor(readonly size = gptqWorkerCount()) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL("./gptq-worker.js", import.meta.url));
      w.on("message", (reply: GptqJobReply) => this.onReply(w, reply));
      w.on("error", (e) => this.failAll(new InternalError(`GPTQ worker failed: ${e.message}`, { cause: e })));
      w.unref(); // an idle worker does not keep the process alive; a busy one does (ref in submit)
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  private onReply(w: Worker, reply: GptqJobReply): void {
    w.unref();
    const p = this.pending.get(reply.id);
    this.pending.delete(reply.id);
    const next = this.waiting.shift();
    if (next) next(w);
    else this.idle.push(w);
    if (!p) return;
    if ("result" in reply) p.resolve(reply.result);
    else p.reject(errorFromWorker(reply.error));
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  private acquire(): Promise<Worker> {
    const w = this.idle.pop();
    return w ? Promise.resolve(w) : new Promise((resolve) => this.waiting.push(resolve));
  }

  /**
   * Wait for a free worker, then start `make()`'s job on it. Returns the job's result promise
   * (wrapped, so awaiting `submit` does not wait for the job). Without workers the job runs here, now.
   */
  async submit(make: () => Omit<GptqJob, "id">): Promise<{ result: Promise<GptqResult> }> {
    if (this.size === 0) {
      // one job at a time: overlapping jobs would hold all their working arrays at once
      await this.previous;
      const result = runGptqJob({ ...make(), id: -1 }).catch((e: unknown) => {
        throw e instanceof MoecalError ? e : new InternalError(`GPTQ: ${(e as Error)?.message ?? String(e)}`, { cause: e });
      });
      this.previous = result.then(
        () => undefined,
        () => undefined,
      );
      return { result };
    }
    const w = await this.acquire();
    const job: GptqJob = { ...make(), id: this.nextId++ };
    const result = new Promise<GptqResult>((resolve, reject) => {
      this.pending.set(job.id, { resolve, reject });
      w.ref();
      w.postMessage(job, [job.weight.buffer as ArrayBuffer, ...("hessian" in job.prep ? [job.prep.hessian.buffer as ArrayBuffer] : [])]);
    });
    result.catch(() => undefined); // the caller awaits it later; an early failure is not "unhandled"
    return { result: inFlight(result) };
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** A worker's error as the typed error it was there (anything not a MoecalError is a bug: InternalError). */
function errorFromWorker(e: { name: string; code: string; message: string }): MoecalError {
  const typed: Record<string, (m: string) => MoecalError> = {
    E_NUMERICAL: (m) => new NumericalError(m),
    E_USAGE: (m) => new UsageError(m),
    E_CONFIG: (m) => new ConfigError(m),
    E_IO: (m) => new IoError(m),
    E_CHECKPOINT_FORMAT: (m) => new CheckpointFormatError(m),
    E_WEIGHT_MAPPING: (m) => new WeightMappingError(m),
  };
  const make = typed[e.code];
  return make ? make(e.message) : new InternalError(`GPTQ worker: ${e.name}: ${e.message}`);
}

let shared: GptqPool | null = null;

/**
 * The process's pool of `size` workers, kept between calls (oneshot quantizes layer after layer:
 * workers start once and stay warm). A different size replaces it; size 0 is a pool without workers.
 */
export async function sharedGptqPool(size: number): Promise<GptqPool> {
  if (size === 0) return new GptqPool(0);
  if (shared?.size === size) return shared;
  await closeSharedGptqPool();
  shared = new GptqPool(size);
  return shared;
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
  const prep = "hessian" in j.prep ? await prepareGptq(j.prep.hessian, j.prep.inF, j.args.actorder, j.name, j.prep.dampening) : j.prep;
  return gptqWithPrep(j.weight, j.out, prep, j.args, j.dtype, j.name, j.blockSize, j.weight, j.globalScale);
}

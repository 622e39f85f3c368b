/**
 * A pool of worker threads running one kind of job (GPTQ, data-free round-to-nearest): at most
 * `depth` jobs per worker in flight (the kind's; one by default), run one after the other;
 * `submit` resolves when a worker has room for the next job, so callers build inputs lazily and
 * memory stays bounded by the pool's size. A pool of size 0 runs
 * each job on the calling thread, one at a time. Errors keep their type across the thread boundary.
 */
import { Worker, parentPort } from "node:worker_threads";
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
import { inFlight } from "./interrupt.js";

/** What a pool runs: the worker script, the job on this thread, and the buffers a job or result hands over. */
export interface PoolKind<J, R> {
  /** named in errors ("GPTQ") */
  what: string;
  script: URL;
  run: (job: J) => Promise<R>;
  /** the job's buffers moved (not copied) to the worker */
  transfer: (job: J) => ArrayBuffer[];
  /** jobs a worker holds at once: the one it runs and those queued behind it, so that it starts the next without waiting for this thread (default 1) */
  depth?: number;
}

/** `v` is its whole buffer: the buffer can move to another thread (a view into a larger one would take the rest along). */
export function ownsBuffer(v: ArrayBufferView): boolean {
  return v.byteOffset === 0 && v.byteLength === v.buffer.byteLength;
}

/**
 * The buffers of `views` that move to another thread, each once: those a view owns whole (a view
 * into a larger buffer is copied instead) and not shared memory (seen there as it is).
 */
export function ownedBuffers(views: readonly ArrayBufferView[]): ArrayBuffer[] {
  const seen = new Set<ArrayBuffer>();
  for (const v of views) if (ownsBuffer(v) && v.buffer instanceof ArrayBuffer) seen.add(v.buffer);
  return [...seen];
}

type Reply<R> = { id: number; result: R } | { id: number; error: { name: string; code: string; message: string } };

export class WorkerPool<J, R> {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly waiting: ((w: Worker) => void)[] = [];
  private readonly pending = new Map<number, { resolve: (r: R) => void; reject: (e: Error) => void }>();
  /** jobs each worker holds */
  private readonly held = new Map<Worker, number>();
  private nextId = 0;
  private previous: Promise<void> = Promise.resolve();

  constructor(
    readonly size: number,
    private readonly kind: PoolKind<J, R>,
  ) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(kind.script);
      w.on("message", (reply: Reply<R>) => this.onReply(w, reply));
      w.on("error", (e) => this.failAll(new InternalError(`${kind.what} worker failed: ${e.message}`, { cause: e })));
      w.unref(); // an idle worker does not keep the process alive; a busy one does (ref in submit)
      this.workers.push(w);
      this.held.set(w, 0);
    }
    // a free place in a worker's queue is the worker once more in `idle`; the workers alternate
    for (let d = 0; d < (kind.depth ?? 1); d++) this.idle.push(...this.workers);
  }

  private onReply(w: Worker, reply: Reply<R>): void {
    const held = (this.held.get(w) ?? 1) - 1;
    this.held.set(w, held);
    if (held === 0) w.unref();
    const p = this.pending.get(reply.id);
    this.pending.delete(reply.id);
    const next = this.waiting.shift();
    if (next) next(w);
    else this.idle.push(w);
    if (!p) return;
    if ("result" in reply) p.resolve(reply.result);
    else p.reject(errorFromWorker(reply.error, this.kind.what));
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
  async submit(make: () => J): Promise<{ result: Promise<R> }> {
    if (this.size === 0) {
      // one job at a time: overlapping jobs would hold all their working arrays at once
      await this.previous;
      const result = this.kind.run(make()).catch((e: unknown) => {
        throw e instanceof MoecalError ? e : new InternalError(`${this.kind.what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
      });
      this.previous = result.then(
        () => undefined,
        () => undefined,
      );
      return { result };
    }
    const w = await this.acquire();
    const job = make();
    const id = this.nextId++;
    const result = new Promise<R>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.held.set(w, (this.held.get(w) ?? 0) + 1);
      w.ref();
      w.postMessage({ id, job }, this.kind.transfer(job));
    });
    result.catch(() => undefined); // the caller awaits it later; an early failure is not "unhandled"
    return { result: inFlight(result) };
  }

  async close(): Promise<void> {
    // a worker being terminated does not hold the process (seen with Node 20: a caller awaiting
    // close() with nothing else pending was left unsettled, exit code 13): a timer does until all exit
    const hold = setInterval(() => undefined, 60_000);
    try {
      await Promise.all(this.workers.map((w) => w.terminate()));
    } finally {
      clearInterval(hold);
    }
  }
}

/** A worker thread's loop: run each job with `run`, one after the other in the order they came, reply with its result (its buffers moved) or its error. */
export function serveJobs<J, R>(run: (job: J) => Promise<R>, transfer: (result: R) => ArrayBuffer[]): void {
  const serve = async ({ id, job }: { id: number; job: J }): Promise<void> => {
    try {
      const result = await run(job);
      parentPort?.postMessage({ id, result } satisfies Reply<R>, transfer(result));
    } catch (e) {
      const error = { name: (e as Error).name, code: e instanceof MoecalError ? e.code : "E_INTERNAL", message: (e as Error).message };
      parentPort?.postMessage({ id, error } satisfies Reply<R>);
    }
  };
  // a job queued behind a running one starts when it ends (a job awaits the engine between its steps)
  let queue = Promise.resolve();
  parentPort?.on("message", (m: { id: number; job: J }) => {
    queue = queue.then(() => serve(m));
  });
}

/** A worker's error as the typed error it was there (anything not a MoecalError is a bug: InternalError). */
function errorFromWorker(e: { name: string; code: string; message: string }, what: string): MoecalError {
  const typed: Record<string, (m: string) => MoecalError> = {
    E_NUMERICAL: (m) => new NumericalError(m),
    E_USAGE: (m) => new UsageError(m),
    E_CONFIG: (m) => new ConfigError(m),
    E_IO: (m) => new IoError(m),
    E_CHECKPOINT_FORMAT: (m) => new CheckpointFormatError(m),
    E_WEIGHT_MAPPING: (m) => new WeightMappingError(m),
  };
  const make = typed[e.code];
  return make ? make(e.message) : new InternalError(`${what} worker: ${e.name}: ${e.message}`);
}

/**
 * A worker (`moecal worker --nats URL --shared-dir DIR`): takes jobs from the queue one at a time.
 * For each, it reads the run's manifest (once per run: refused, and the worker stops, when it was
 * made by another moecal version, names paths outside --shared-dir, or the model there has another
 * content hash), does the job (a token shard of a layer's non-expert part: token-shards.ts; the GPTQ
 * of a non-expert Linear: gptq-jobs.ts; an expert group: quantized from the model and the layer's
 * streamed calibration calls), writes its files to
 * the run's work folder, puts the job's done key, and only then acknowledges it. A worker killed mid-job never acknowledges: the server redelivers the job after
 * the run's --job-timeout. While a job runs the worker tells the server it is alive.
 */
import os from "node:os";
import { type Consumer, type JsMsg, jetstream } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { InternalError, InterruptedError, MoecalError, UsageError } from "../errors.js";
import { closeSharedGptqPool } from "../quantization/gptq-pool.js";
import { recipeFromText } from "../quantization/recipe-file.js";
import { quantizeGroupJob } from "../pipeline/expert-groups.js";
import { type LayerSteps, stepSettings } from "../pipeline/layer-steps.js";
import type { OneshotOptions } from "../pipeline/oneshot.js";
import { recipeOf } from "../pipeline/recipe-options.js";
import { modelHash, openRunModel } from "../pipeline/run.js";
import { checkStop } from "../util/interrupt.js";
import { WORKER_OPTIONS, checkOptions } from "../pipeline/options.js";
import { type JobMessage, doneKey, failedKey, jobLabel, jobToken, parseJob } from "./jobs.js";
import { tokenShardJob } from "../pipeline/token-shards.js";
import { gptqJob } from "../pipeline/gptq-jobs.js";
import { CONSUMER, type NatsOptions, STREAM, connectNats, openBucket } from "./nats.js";
import { type RunManifest, checkManifest, sharedRoot } from "./run-manifest.js";

export interface WorkerOptions {
  nats: NatsOptions;
  /** the folder every run's model and work folder must lie in (the cluster's shared file system) */
  sharedDir: string;
  /** GPTQ threads (default one per core) */
  workers?: number;
  onEvent?: (e: WorkerEvent) => void;
  warn?: (message: string) => void;
}

export type WorkerEvent =
  | { kind: "ready"; worker: string }
  /** `job`: its key token (jobs.ts jobToken), `what`: the work in words */
  | { kind: "job-start"; run: string; layer: number; job: string; what: string; delivery: number }
  | { kind: "job-done"; run: string; layer: number; job: string; seconds: number }
  /** a redelivered job another worker finished meanwhile */
  | { kind: "job-skipped"; run: string; layer: number; job: string }
  | { kind: "job-failed"; run: string; layer: number; job: string; code: string; message: string }
  /** a message that is not a job this version reads, or of a run whose manifest is gone: dropped */
  | { kind: "job-dropped"; reason: string };

interface OpenedRun {
  manifest: RunManifest;
  steps: LayerSteps;
}

/** Serve jobs until the process is stopped (a signal), or a run's manifest is refused (the error says why). */
export async function runWorker(options: WorkerOptions): Promise<never> {
  const o = checkOptions("runWorker", WORKER_OPTIONS, options) as WorkerOptions;
  sharedRoot(o.sharedDir);
  const name = `${os.hostname()}:${process.pid}`;
  const nc = await connectNats(o.nats);
  try {
    const consumer = await waitForQueue(nc);
    const kv = await openBucket(nc);
    const runs = new Map<string, OpenedRun>();
    o.onEvent?.({ kind: "ready", worker: name });
    for (;;) {
      checkStop();
      const m = await consumer.next({ expires: 2000 });
      if (m) await handle(m, { kv, runs, name, consumer, o });
    }
  } finally {
    await closeSharedGptqPool();
    await nc.close();
  }
}

/** The workers' consumer, once a coordinator has made it (workers may start first; `get` fails until then). */
async function waitForQueue(nc: Awaited<ReturnType<typeof connectNats>>): Promise<Consumer> {
  for (;;) {
    try {
      return await jetstream(nc).consumers.get(STREAM, CONSUMER);
    } catch {
      checkStop();
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

interface Context {
  kv: KV;
  runs: Map<string, OpenedRun>;
  name: string;
  consumer: Consumer;
  o: WorkerOptions;
}

async function handle(m: JsMsg, c: Context): Promise<void> {
  const job = parseJob(m.string());
  if (!job) {
    m.term();
    c.o.onEvent?.({ kind: "job-dropped", reason: `message ${m.seq} is not a job moecal's protocol reads` });
    return;
  }
  const token = jobToken(job);
  const at = { run: job.run, layer: job.layer, job: token };
  if ((await c.kv.get(doneKey(job.run, job.layer, token)))?.operation === "PUT") {
    m.ack();
    c.o.onEvent?.({ kind: "job-skipped", ...at });
    return;
  }
  const run = await openedRun(m, job, c);
  if (!run) return;
  c.o.onEvent?.({ kind: "job-start", ...at, what: jobLabel(job), delivery: m.info.deliveryCount });
  // alive every third of the ack timeout the latest coordinator set (--job-timeout)
  const ackWaitMs = ((await c.consumer.info()).config.ack_wait ?? 60e9) / 1e6;
  const beat = setInterval(() => m.working(), Math.max(250, ackWaitMs / 3));
  const t0 = performance.now();
  try {
    if (job.layer >= run.steps.run.config.numHiddenLayers)
      throw new UsageError(`the model has ${run.steps.run.config.numHiddenLayers} layers, the job is for layer ${job.layer}`);
    // temporaries named by the worker: a redelivered job may run beside this one, on another host
    const tag = c.name.replace(/[^A-Za-z0-9_-]/g, "_");
    const dir = run.manifest.work_dir;
    if (job.kind === "group") await quantizeGroupJob(run.steps, dir, job.layer, { ...job, tag });
    else if (job.kind === "gptq") await gptqJob(run.steps, dir, job.layer, { ...job, tag });
    else await tokenShardJob(run.steps, dir, job.layer, { ...job, tag });
    const seconds = (performance.now() - t0) / 1000;
    await c.kv.put(doneKey(job.run, job.layer, token), JSON.stringify({ worker: c.name, seconds }));
    m.ack();
    c.o.onEvent?.({ kind: "job-done", ...at, seconds });
  } catch (e) {
    // a bug, or a stop: the job goes back to the queue for another worker; this one stops
    if (!(e instanceof MoecalError) || e instanceof InternalError || e instanceof InterruptedError) {
      m.nak();
      throw e;
    }
    // a bad input (file, option): the run fails with it, in the coordinator
    await c.kv.put(failedKey(job.run, job.layer, token), JSON.stringify({ worker: c.name, code: e.code, message: e.message }));
    m.term();
    c.o.onEvent?.({ kind: "job-failed", ...at, code: e.code, message: e.message });
  } finally {
    clearInterval(beat);
  }
}

/** The run of `job`, opened on its first job: null when its manifest is gone (the job is dropped); a refused manifest stops the worker. */
async function openedRun(m: JsMsg, job: JobMessage, c: Context): Promise<OpenedRun | null> {
  const known = c.runs.get(job.run);
  if (known) return known;
  const entry = await c.kv.get(`${job.run}.manifest`);
  if (entry?.operation !== "PUT") {
    m.term();
    c.o.onEvent?.({ kind: "job-dropped", reason: `run ${job.run} has no manifest in the bucket (its coordinator is gone)` });
    return null;
  }
  try {
    const run = await openManifestRun(entry.string(), job.run, c.o);
    c.runs.set(job.run, run);
    return run;
  } catch (e) {
    m.nak();
    throw e;
  }
}

/** The run a manifest describes, opened as the coordinator opened it, refused unless this worker may and can take its jobs. */
async function openManifestRun(text: string, id: string, o: WorkerOptions): Promise<OpenedRun> {
  const manifest = checkManifest(text, id, o.sharedDir);
  const opts: OneshotOptions = {
    ...manifest.options,
    model: manifest.model_dir,
    ...(o.workers === undefined ? {} : { workers: o.workers }),
    warn: o.warn ?? (() => undefined),
  };
  const recipe = manifest.recipe ? recipeFromText(manifest.recipe.file, manifest.recipe.text) : recipeOf(opts);
  const run = openRunModel(opts, recipe);
  const sha = await modelHash(run);
  if (sha !== manifest.model_sha256)
    throw new UsageError(
      `run ${id}: the model at ${manifest.model_dir} on this host is not the coordinator's (content hash ${sha.slice(0, 12)}, the run's ${manifest.model_sha256.slice(0, 12)})`,
    );
  const steps: LayerSteps = {
    run,
    ...stepSettings(run),
    samples: 0,
    shards: [],
    eachInput: () => {
      throw new InternalError("a worker's job reads its own layer inputs (a token shard) or replays the streamed calls (a group)");
    },
  };
  return { manifest, steps };
}

/**
 * The coordinator's side of a distributed run (`oneshot --nats`): the layer loop runs here as in a
 * local run, and each MoE layer's token shards (its non-expert part, in three phases) and expert
 * groups go to the workers as jobs. A job's result is its files in the shared work folder and a key
 * `<run>.done.<layer>.<token>` in the bucket (jobs.ts); a rerun of the same command finds the jobs
 * done there (and their files) and does not queue them again.
 */
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { RemoteJobError } from "../errors.js";
import type { GroupSpan, RemoteExecutor, ShardJob } from "../pipeline/remote-groups.js";
import { type ShardPhase, readShardResult } from "../pipeline/token-shards.js";
import { readGroupResult } from "../pipeline/group-state.js";
import { gptqFiles } from "../pipeline/gptq-jobs.js";
import { groupFiles } from "../pipeline/moe-stream.js";
import type { ProgressEvent } from "../pipeline/oneshot.js";
import { lstatOrNull } from "../pipeline/work-folder.js";
import { BUCKET, CONSUMER, MAX_DELIVER, STREAM, ensureQueue, jobSubject, openBucket } from "./nats.js";
import { type RunManifest, runId } from "./run-manifest.js";
import { type JobMessage, doneKey, failedKey, jobLabel, jobToken } from "./jobs.js";

export interface Coordinator extends RemoteExecutor {
  close(): Promise<void>;
}

/**
 * On a connection (connectNats: made before the run's other work, so a wrong URL is said at once),
 * make the queue and bucket when missing, and put the run's manifest (`fresh`: a new work folder,
 * so the run's earlier job states and queued jobs are purged first). Closing it closes the connection.
 */
export async function openCoordinator(
  nc: NatsConnection,
  manifest: RunManifest,
  o: { jobTimeout?: number; fresh: boolean; onProgress?: (e: ProgressEvent) => void },
): Promise<Coordinator> {
  try {
    const jsm = await ensureQueue(nc, o.jobTimeout ?? 60);
    const kv = await openBucket(nc);
    const id = runId(manifest);
    if (o.fresh) {
      await jsm.streams.purge(`KV_${BUCKET}`, { filter: `$KV.${BUCKET}.${id}.>` });
      await jsm.streams.purge(STREAM, { filter: jobSubject(id) });
    }
    await kv.put(`${id}.manifest`, JSON.stringify(manifest));
    // this coordinator's message ids: the server's de-duplication guards its own retries, never a
    // later coordinator's queueing (a job a purge or a restart needs queued again)
    const session = randomBytes(6).toString("hex");
    const run = { nc, kv, id, session, workDir: manifest.work_dir, onProgress: o.onProgress };
    return {
      session,
      shards: (layer, phase, shards) =>
        runJobs(
          run,
          layer,
          shards.map((s) => shardJob(run, layer, phase, s)),
        ),
      gptq: (layer, n, linear) => runJobs(run, layer, [gptqJobOf(run, layer, n, linear)]),
      quantize: (layer, spans, g) =>
        runJobs(
          run,
          layer,
          spans.map((s) => groupJob(run, layer, s, g)),
        ),
      // each idle worker holds one pull request on the consumer
      idleWorkers: async () => (await jsm.consumers.info(STREAM, CONSUMER)).num_waiting,
      close: () => nc.drain(),
    };
  } catch (e) {
    await nc.close();
    throw e;
  }
}

interface CoordinatedRun {
  nc: NatsConnection;
  kv: KV;
  id: string;
  session: string;
  workDir: string;
  onProgress?: (e: ProgressEvent) => void;
}

/** A job to queue: its message, and whether its files are in the work folder (null: they cannot be told, so it is always done again). */
interface Job {
  message: JobMessage;
  filesDone(): boolean | null;
  /** a worker finished it (its files are in the work folder) */
  finished(worker: string, seconds: number): void;
}

/** Whether `files` are regular files and `check` reads them back. */
function present(files: readonly string[], check: () => void = () => undefined): boolean {
  for (const f of files) if (!lstatOrNull(f)?.isFile()) return false;
  try {
    check();
    return true;
  } catch {
    return false;
  }
}

/** Group `s`'s job: done when its result reads back, beside a tensors file and, with `sums`, its routed rows. */
function groupJob(r: CoordinatedRun, layer: number, s: GroupSpan, g: { sums: boolean; shards: number }): Job {
  const files = groupFiles(r.workDir, layer);
  return {
    message: { kind: "group", run: r.id, layer, ...s, ...g },
    filesDone: () =>
      present([files.tensors(s.group), ...(g.sums ? [files.rows(s.group)] : [])], () => readGroupResult(files, s.group, s.first, s.end)),
    finished: (worker, seconds) => r.onProgress?.({ kind: "group-job-done", layer, group: s.group, worker, seconds }),
  };
}

/**
 * Token shard `s`'s job in `phase`: calibrate is done when its statistics read back (an MoE layer's
 * calls are written before them), propagate when its calls are there. An output shard writes into this coordinator's own outputs
 * file (named by its session), which an earlier coordinator's jobs never saw: it is always done again.
 */
function shardJob(r: CoordinatedRun, layer: number, phase: ShardPhase, s: ShardJob): Job {
  const files = groupFiles(r.workDir, layer);
  const { shard, offset, lengths } = s;
  const message: JobMessage = {
    kind: "shard",
    run: r.id,
    layer,
    phase,
    shard,
    offset,
    lengths,
    ...(phase === "output" ? { routed: s.routed, slots: r.session } : {}),
  };
  return {
    message,
    filesDone: () =>
      phase === "calibrate"
        ? present([files.shardStats(shard)], () => readShardResult(files, shard))
        : phase === "propagate"
          ? present([files.calls("propagate", shard)])
          : null,
    finished: (worker, seconds) => r.onProgress?.({ kind: "shard-job-done", layer, phase, shard, worker, seconds }),
  };
}

/** GPTQ job `n` of `layer`: done when its result is there. */
function gptqJobOf(r: CoordinatedRun, layer: number, n: number, linear: string): Job {
  return {
    message: { kind: "gptq", run: r.id, layer, n, linear },
    filesDone: () => present([gptqFiles(r.workDir, layer, n).result]),
    finished: (worker, seconds) => r.onProgress?.({ kind: "gptq-job-done", layer, linear, worker, seconds }),
  };
}

/** Queue the layer's jobs not done yet, and wait until every one is (or one fails, or is given up after MAX_DELIVER deliveries). */
async function runJobs(r: CoordinatedRun, layer: number, jobs: readonly Job[]): Promise<void> {
  const { id, kv } = r;
  const pending = new Map<string, Job>();
  for (const j of jobs) {
    const done = j.filesDone();
    if (!(done && (await kv.get(doneKey(id, layer, jobToken(j.message))))?.operation === "PUT")) pending.set(jobToken(j.message), j);
  }
  const first = jobs[0]?.message;
  const progress = (): void => {
    const counts = { layer, queued: pending.size, done: jobs.length - pending.size };
    if (first?.kind === "shard") r.onProgress?.({ kind: "shard-jobs", phase: first.phase, ...counts });
    else if (first?.kind === "group") r.onProgress?.({ kind: "group-jobs", ...counts });
  };
  if (pending.size === 0) return progress();
  // a failure an earlier coordinator saw is not this one's, nor is a done key without files: the job is queued again
  for (const token of pending.keys()) for (const key of [failedKey(id, layer, token), doneKey(id, layer, token)]) await kv.purge(key);
  const watcher = await kv.watch({ key: `${id}.*.${layer}.*` });
  const advisories = r.nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${STREAM}.${CONSUMER}`);
  let givenUp: Error | null = null;
  const bySeq = new Map<number, JobMessage>();
  void (async () => {
    for await (const m of advisories) {
      const job = bySeq.get((m.json() as { stream_seq: number }).stream_seq);
      if (!job) continue;
      givenUp = new RemoteJobError(
        "E_JOB_GIVEN_UP",
        `layer ${layer} ${jobLabel(job)}: the job was delivered ${MAX_DELIVER} times and no worker finished it (workers died or ran past --job-timeout); see the workers' logs`,
      );
      watcher.stop();
    }
  })();
  try {
    const js = jetstream(r.nc);
    for (const [token, j] of pending) {
      const ack = await js.publish(jobSubject(id), JSON.stringify(j.message), { msgID: `${id}.${r.session}.${layer}.${token}` });
      bySeq.set(ack.seq, j.message);
    }
    progress();
    for await (const e of watcher) {
      if (e.operation !== "PUT") continue;
      const [, state, , token] = e.key.split(".");
      const j = token === undefined ? undefined : pending.get(token);
      if (!j) continue;
      const v = JSON.parse(e.string()) as { worker: string; seconds?: number; code?: string; message?: string };
      if (state === "failed")
        throw new RemoteJobError(
          v.code ?? "E_JOB",
          `layer ${layer} ${jobLabel(j.message)}, in worker ${v.worker}: ${v.message ?? "failed"}`,
        );
      if (j.filesDone() === false) continue;
      pending.delete(token as string);
      j.finished(v.worker, v.seconds ?? 0);
      if (pending.size === 0) break;
    }
    if (givenUp) throw givenUp;
    if (pending.size > 0)
      throw new RemoteJobError("E_NATS", `layer ${layer}: the connection to the NATS server closed with ${pending.size} job(s) not done`);
  } finally {
    watcher.stop();
    advisories.unsubscribe();
  }
}

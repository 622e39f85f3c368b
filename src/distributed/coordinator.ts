/**
 * The coordinator's side of a distributed run (`oneshot --nats`): the layer loop runs here as in a
 * local run, and each MoE layer's expert groups go to the workers as jobs. A job's result is its
 * files in the shared work folder and a key `<run>.done.<layer>.<group>-<first>-<end>` in the bucket; a rerun
 * of the same command finds the groups done there (and their files) and does not queue them again.
 */
import { randomBytes } from "node:crypto";
import { jetstream } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { RemoteJobError } from "../errors.js";
import type { GroupExecutor, GroupSpan } from "../pipeline/remote-groups.js";
import { readGroupResult } from "../pipeline/group-state.js";
import { groupFiles } from "../pipeline/moe-stream.js";
import type { ProgressEvent } from "../pipeline/oneshot.js";
import { lstatOrNull } from "../pipeline/work-folder.js";
import { BUCKET, CONSUMER, MAX_DELIVER, STREAM, ensureQueue, jobSubject, openBucket } from "./nats.js";
import { type RunManifest, runId } from "./run-manifest.js";
import { type GroupJobMessage, doneKey, failedKey, groupToken } from "./jobs.js";

export interface Coordinator extends GroupExecutor {
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
    return {
      quantize: (layer, spans, sums) =>
        runJobs(nc, kv, { id, session, layer, spans, sums, workDir: manifest.work_dir, onProgress: o.onProgress }),
      // each idle worker holds one pull request on the consumer
      idleWorkers: async () => (await jsm.consumers.info(STREAM, CONSUMER)).num_waiting,
      close: () => nc.drain(),
    };
  } catch (e) {
    await nc.close();
    throw e;
  }
}

/** Whether group `s` of `layer` has its files in the work folder, complete (a result that reads back, beside a tensors file and, with `sums`, its routed rows). */
function filesDone(workDir: string, layer: number, s: GroupSpan, sums: boolean): boolean {
  const files = groupFiles(workDir, layer);
  for (const f of [files.tensors(s.group), ...(sums ? [files.rows(s.group)] : [])]) if (!lstatOrNull(f)?.isFile()) return false;
  try {
    readGroupResult(files, s.group, s.first, s.end);
    return true;
  } catch {
    return false;
  }
}

/** Queue the layer's groups not done yet, and wait until every one is (or one fails, or is given up after MAX_DELIVER deliveries). */
async function runJobs(
  nc: NatsConnection,
  kv: KV,
  r: {
    id: string;
    session: string;
    layer: number;
    spans: readonly GroupSpan[];
    sums: boolean;
    workDir: string;
    onProgress?: (e: ProgressEvent) => void;
  },
): Promise<void> {
  const { id, layer } = r;
  const pending = new Map<number, GroupSpan>();
  for (const s of r.spans)
    if (!((await kv.get(doneKey(id, layer, s)))?.operation === "PUT" && filesDone(r.workDir, layer, s, r.sums))) pending.set(s.group, s);
  const progress = (): void => r.onProgress?.({ kind: "group-jobs", layer, queued: pending.size, done: r.spans.length - pending.size });
  if (pending.size === 0) return progress();
  // a failure an earlier coordinator saw is not this one's: its job is queued again
  for (const s of pending.values()) await kv.purge(failedKey(id, layer, s));
  const watcher = await kv.watch({ key: `${id}.*.${layer}.*` });
  const advisories = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${STREAM}.${CONSUMER}`);
  let given_up: Error | null = null;
  const bySeq = new Map<number, number>();
  void (async () => {
    for await (const m of advisories) {
      const g = bySeq.get((m.json() as { stream_seq: number }).stream_seq);
      if (g === undefined) continue;
      given_up = new RemoteJobError(
        "E_JOB_GIVEN_UP",
        `layer ${layer} expert group ${g}: the job was delivered ${MAX_DELIVER} times and no worker finished it (workers died or ran past --job-timeout); see the workers' logs`,
      );
      watcher.stop();
    }
  })();
  try {
    const js = jetstream(nc);
    for (const s of pending.values()) {
      const job: GroupJobMessage = { run: id, layer, ...s, sums: r.sums };
      const ack = await js.publish(jobSubject(id), JSON.stringify(job), { msgID: `${id}.${r.session}.${layer}.${groupToken(s)}` });
      bySeq.set(ack.seq, s.group);
    }
    progress();
    for await (const e of watcher) {
      if (e.operation !== "PUT") continue;
      const [, state, , token] = e.key.split(".");
      const g = Number(token?.split("-")[0]);
      const span = pending.get(g);
      if (!span || token !== groupToken(span)) continue;
      const v = JSON.parse(e.string()) as { worker: string; seconds?: number; code?: string; message?: string };
      if (state === "failed")
        throw new RemoteJobError(v.code ?? "E_JOB", `layer ${layer} expert group ${g}, in worker ${v.worker}: ${v.message ?? "failed"}`);
      if (!filesDone(r.workDir, layer, span, r.sums)) continue;
      pending.delete(g);
      r.onProgress?.({ kind: "group-job-done", layer, group: g, worker: v.worker, seconds: v.seconds ?? 0 });
      if (pending.size === 0) break;
    }
    if (given_up) throw given_up;
    if (pending.size > 0)
      throw new RemoteJobError("E_NATS", `layer ${layer}: the connection to the NATS server closed with ${pending.size} job(s) not done`);
  } finally {
    watcher.stop();
    advisories.unsubscribe();
  }
}

/**
 * The NATS JetStream objects a distributed run uses, on a NATS server the user runs (moecal opens no
 * listener): a work-queue stream of jobs with one durable pull consumer every worker shares (ack
 * timeout, redelivery and a delivery limit are the server's), and a key-value bucket holding each
 * run's manifest and which jobs are done. Credentials and TLS are passed through to the client.
 */
import fs from "node:fs";
import { AckPolicy, type JetStreamManager, RetentionPolicy, StorageType, jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { type NatsConnection, connect, credsAuthenticator, nanos } from "@nats-io/transport-node";
import { UsageError } from "../errors.js";

/** How to reach the NATS server: its URL (user:password@ allowed), and optional credentials file and TLS files. */
export interface NatsOptions {
  url: string;
  /** a NATS credentials file (JWT and NKey seed) */
  creds?: string;
  /** CA certificate that verifies the server (TLS) */
  tlsCa?: string;
  /** client certificate and key (mutual TLS) */
  tlsCert?: string;
  tlsKey?: string;
}

export const STREAM = "MOECAL_JOBS";
export const CONSUMER = "moecal-workers";
export const BUCKET = "moecal";
/** A job is delivered at most this many times (a worker that dies or stops answering counts one). */
export const MAX_DELIVER = 5;

/** The subject of run `run`'s jobs. */
export const jobSubject = (run: string): string => `moecal.jobs.${run}`;

/** Connect to the server, or say why not (naming the URL; a bad credentials or TLS file named too). */
export async function connectNats(o: NatsOptions): Promise<NatsConnection> {
  const file = (what: string, f: string): string => {
    if (!fs.existsSync(f)) throw new UsageError(`--nats-${what} ${f}: no such file`);
    return f;
  };
  const tls =
    o.tlsCa || o.tlsCert || o.tlsKey
      ? {
          ...(o.tlsCa ? { caFile: file("tls-ca", o.tlsCa) } : {}),
          ...(o.tlsCert ? { certFile: file("tls-cert", o.tlsCert) } : {}),
          ...(o.tlsKey ? { keyFile: file("tls-key", o.tlsKey) } : {}),
        }
      : undefined;
  const { server, user, pass } = credentialsOf(o.url);
  try {
    return await connect({
      servers: server,
      ...(user ? { user, pass } : {}),
      name: `moecal-${process.pid}`,
      ...(o.creds ? { authenticator: credsAuthenticator(fs.readFileSync(file("creds", o.creds))) } : {}),
      ...(tls ? { tls } : {}),
      maxReconnectAttempts: -1,
    });
  } catch (cause) {
    throw new UsageError(`--nats ${redacted(o.url)}: cannot connect (${(cause as Error).message})`, { cause });
  }
}

/** The URL without its user:password@, and those (the client takes them as options). */
function credentialsOf(url: string): { server: string; user: string; pass: string } {
  const m = /^([a-z]+:\/\/)([^:@/]*)(?::([^@/]*))?@(.*)$/.exec(url);
  if (!m) return { server: url, user: "", pass: "" };
  return { server: `${m[1]}${m[4]}`, user: decodeURIComponent(m[2] ?? ""), pass: decodeURIComponent(m[3] ?? "") };
}

/** A server URL as printed: without a password. */
function redacted(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, "//$1:***@");
}

/** The jobs stream and the workers' consumer, made or brought to `ackWaitSeconds` (the coordinator's --job-timeout). */
export async function ensureQueue(nc: NatsConnection, ackWaitSeconds: number): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(STREAM);
  } catch {
    await jsm.streams.add({
      name: STREAM,
      subjects: ["moecal.jobs.>"],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
    });
  }
  const config = { ack_wait: nanos(ackWaitSeconds * 1000), max_deliver: MAX_DELIVER };
  try {
    const c = await jsm.consumers.info(STREAM, CONSUMER);
    if (c.config.ack_wait !== config.ack_wait) await jsm.consumers.update(STREAM, CONSUMER, config);
  } catch {
    await jsm.consumers.add(STREAM, { durable_name: CONSUMER, ack_policy: AckPolicy.Explicit, filter_subject: "moecal.jobs.>", ...config });
  }
  return jsm;
}

/** The bucket of runs' manifests and job states. */
export function openBucket(nc: NatsConnection): Promise<KV> {
  return new Kvm(nc).create(BUCKET, { history: 1 });
}

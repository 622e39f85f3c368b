import type { Command } from "commander";
import { type WorkerEvent, runWorker } from "../distributed/worker.js";
import { intOption } from "./options.js";

interface WorkerCliOptions {
  nats: string;
  sharedDir: string;
  workers?: number;
  natsCreds?: string;
  natsTlsCa?: string;
  natsTlsCert?: string;
  natsTlsKey?: string;
  json?: boolean;
}

/** The NATS connection options oneshot (the coordinator) and worker share. */
export function natsOptions(cmd: Command): Command {
  return cmd
    .option("--nats-creds <file>", "NATS credentials file (JWT and NKey seed)")
    .option("--nats-tls-ca <file>", "CA certificate that verifies the NATS server (TLS)")
    .option("--nats-tls-cert <file>", "client certificate for mutual TLS")
    .option("--nats-tls-key <file>", "client key for mutual TLS");
}

/** The connection options as the library takes them. */
export function natsConnection(url: string, o: Pick<WorkerCliOptions, "natsCreds" | "natsTlsCa" | "natsTlsCert" | "natsTlsKey">) {
  return { url, creds: o.natsCreds, tlsCa: o.natsTlsCa, tlsCert: o.natsTlsCert, tlsKey: o.natsTlsKey };
}

/** A worker event as one line for a log. */
function describe(e: WorkerEvent): string {
  switch (e.kind) {
    case "ready":
      return `worker ${e.worker}: waiting for jobs`;
    case "job-start":
      return `run ${e.run} layer ${e.layer} ${e.what}${e.delivery > 1 ? `, delivery ${e.delivery}` : ""}`;
    case "job-done":
      return `run ${e.run} layer ${e.layer} job ${e.job}: done in ${e.seconds.toFixed(1)} s`;
    case "job-skipped":
      return `run ${e.run} layer ${e.layer} job ${e.job}: already done by another worker`;
    case "job-failed":
      return `run ${e.run} layer ${e.layer} job ${e.job}: failed [${e.code}]: ${e.message}`;
    case "job-dropped":
      return `dropped: ${e.reason}`;
  }
}

export function registerWorker(program: Command): void {
  natsOptions(
    program
      .command("worker")
      .description("take expert-group jobs of distributed oneshot runs (oneshot --nats) from a NATS JetStream server until stopped")
      .requiredOption("--nats <url>", "the NATS server (nats://host:4222; user:password@ allowed)")
      .requiredOption(
        "--shared-dir <dir>",
        "the shared folder runs' models and work folders lie in; the worker reads and writes nothing outside it",
      )
      .option("--workers <n>", "GPTQ threads (default one per core)", intOption("--workers", 0))
      .option("--json", "one JSON line per event on stdout instead of log lines on stderr"),
  ).action(async (o: WorkerCliOptions) => {
    await runWorker({
      nats: natsConnection(o.nats, o),
      sharedDir: o.sharedDir,
      workers: o.workers,
      onEvent: (e) => {
        if (o.json) process.stdout.write(`${JSON.stringify(e)}\n`);
        else process.stderr.write(`${new Date().toISOString()} ${describe(e)}\n`);
      },
      warn: (m) => process.stderr.write(`warning: ${m}\n`),
    });
  });
}

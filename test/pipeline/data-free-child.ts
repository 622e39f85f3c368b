/**
 * A data-free oneshot run for the resume tests, in its own process:
 * `node data-free-child.js OUTPUT [STAGE SHARD] [--model DIR] [--scheme S] [--workers N] [--restart] [--calibrate]`
 * quantizes DIR (default the bundled model; RTN, shards of 1 MiB) and, given STAGE ("shard-file": the shard's
 * file finished, its record not yet written; "shard": both) and SHARD, kills itself with SIGKILL
 * there. Prints the resume and byte-progress events as JSON lines.
 */
import { oneshot } from "../../src/pipeline/oneshot.js";

const [output, stage, shard] = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const workers = flag("--workers");
await oneshot({
  output,
  model: flag("--model"),
  scheme: flag("--scheme") ?? "W8A16",
  method: "rtn",
  maxShardBytes: 1024 ** 2,
  workers: workers === undefined ? undefined : Number(workers),
  restart: process.argv.includes("--restart"),
  calibrate: process.argv.includes("--calibrate"),
  numSamples: 1,
  maxSeqLength: 8,
  warn: () => undefined,
  onProgress: (e) => {
    if (e.kind === "resume-shards") process.stdout.write(`${JSON.stringify({ kind: e.kind, shards: e.shards })}\n`);
    if (e.kind === "bytes" && e.done === e.total) process.stdout.write(`${JSON.stringify(e)}\n`);
  },
  onCheckpoint: (s, i) => {
    if (s === stage && String(i) === shard) process.kill(process.pid, "SIGKILL");
  },
});

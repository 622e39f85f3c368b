/**
 * `npm run bench:data-free` (also a section of `npm run bench`): data-free round-to-nearest on a
 * random 4-layer Qwen3-30B-A3B-shaped checkpoint (about 4.9 GB of BF16) and on its copy stored in
 * FP8 blocks of 128, for W4A16 (on the main thread alone and with a worker per core), NVFP4A16 and
 * FP8_BLOCK (a worker per core), each run its own process: seconds, source bytes per second, peak
 * RSS, the plan's estimate; against the rate at which this process reads the same shards (in the
 * same run) and against the calibrated RTN path (`--calibrate`) on a 1-layer copy. Writes
 * bench/data-free-results.json.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { MoecalError } from "../src/errors.js";
import { Checkpoint } from "../src/io/checkpoint.js";
import { PIECE_BYTES } from "../src/io/writer.js";
import { PACKAGE_ROOT } from "../src/paths.js";
import { runFromSummary } from "../src/pipeline/report.js";
import { plan } from "../src/pipeline/plan.js";
import { cli, nanoSetup, qwen3Setup } from "./plan.js";

/** worker threads of the default run: one per core */
const CORES = os.availableParallelism();

export interface DataFreeRun {
  model: string;
  scheme: string;
  /** worker threads (--workers): 0 runs everything on the main thread */
  workers: number;
  /** the plan's estimate of the run's seconds */
  planned_seconds: number;
  /** the source's weight bytes (its shards) */
  source_bytes: number;
  seconds: number;
  source_mb_per_s: number;
  peak_rss_mb: number;
}

function sourceBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".safetensors"))
    .reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
}

/** MB/s at which every tensor of `dir` is read in pieces (the page cache as the runs find it). */
function readRate(dir: string): number {
  const ck = Checkpoint.open(dir);
  const t0 = performance.now();
  let bytes = 0;
  for (const n of ck.names()) for (const piece of ck.rawChunks(n, PIECE_BYTES)) bytes += piece.byteLength;
  return bytes / 1e6 / ((performance.now() - t0) / 1000);
}

function oneshot(model: string, args: string[], out: string): { seconds: number; peakRssMb: number } {
  const r = spawnSync(cli, ["oneshot", "--model", model, "--method", "rtn", "--output", out, "--overwrite", ...args], {
    encoding: "utf8",
    maxBuffer: 64 * 1024 ** 2,
  });
  const t = runFromSummary(r.stdout);
  if (r.status !== 0 || !t) throw new MoecalError("E_BENCH", `oneshot failed: ${r.stderr.slice(-800)}`);
  fs.rmSync(out, { recursive: true, force: true });
  return { seconds: t.wallSeconds, peakRssMb: t.peakRssMb };
}

/** The runs, in `work`. */
export async function benchDataFree(work: string, log: (s: string) => void): Promise<Record<string, unknown>> {
  log("a 4-layer Qwen3-30B-A3B-shaped checkpoint, BF16 and in FP8 blocks (minutes)");
  const bf16 = qwen3Setup(work, { layers: 4 });
  const fp8 = qwen3Setup(work, { layers: 4, fp8Block: 128 });
  const runs: DataFreeRun[] = [];
  const reads: Record<string, number> = {};
  for (const [name, model] of [
    ["bf16", bf16],
    ["fp8-blocks", fp8],
  ] as const) {
    reads[name] = readRate(model);
    const cases: [string, number][] = [
      ["W4A16", 0],
      ["W4A16", CORES],
      ["NVFP4A16", CORES],
      ["FP8_BLOCK", CORES],
    ];
    for (const [scheme, workers] of cases) {
      log(`${name} ${scheme}, ${workers} workers: data-free`);
      const planned = await plan({ model, scheme, method: "rtn", workers });
      const r = oneshot(model, ["--scheme", scheme, "--workers", String(workers), "--quiet"], path.join(work, "out"));
      const bytes = sourceBytes(model);
      runs.push({
        model: name,
        scheme,
        workers,
        planned_seconds: planned.seconds,
        source_bytes: bytes,
        seconds: r.seconds,
        source_mb_per_s: bytes / 1e6 / r.seconds,
        peak_rss_mb: r.peakRssMb,
      });
    }
  }
  log("the calibrated RTN path on a 1-layer copy, 64 x 512 tokens");
  const small = qwen3Setup(work, { layers: 1 });
  const { data } = nanoSetup(work, { model: false });
  const calibrated = oneshot(
    small,
    ["--scheme", "W4A16", "--calibrate", "--dataset", data, "--num-samples", "64", "--max-seq-length", "512", "--quiet"],
    path.join(work, "out"),
  );
  const free = oneshot(small, ["--scheme", "W4A16", "--quiet"], path.join(work, "out"));
  return {
    date: new Date().toISOString(),
    read_mb_per_s: reads,
    runs,
    one_layer_w4a16: { source_bytes: sourceBytes(small), calibrated_seconds: calibrated.seconds, data_free_seconds: free.seconds },
  };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-data-free-"));
  const log = (s: string): void => void process.stderr.write(`${new Date().toISOString()} bench:data-free: ${s}\n`);
  try {
    const r = await benchDataFree(work, log);
    fs.writeFileSync(path.join(PACKAGE_ROOT, "bench", "data-free-results.json"), `${JSON.stringify(r, null, 2)}\n`);
    console.log(JSON.stringify(r, null, 2));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();

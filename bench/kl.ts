/**
 * Quality of calibrating every expert vs routed tokens only, on the bundled model:
 * oneshot (routed experts only, as the pipeline issue specifies) then eval against the BF16
 * model on the held-out sets, for several schemes and seeds. `npm run bench:kl [-- --seeds 42,1,2]`.
 * A routed-only run with starved experts gets a second row, "routed only, starved zeroed": the
 * same checkpoint with those experts' weight scales set to zero, i.e. what the reference algorithm
 * ships (GPTQ on an all-zero Hessian zeroes the weight), which moecal itself never does.
 * Each scheme also gets one round-to-nearest run (no Hessian; `--no-rtn` skips it). Rows in the
 * JSON carry each set's per-token KL distribution (`kl_stats`) besides the mean.
 * Prints a markdown table and writes bench/kl-results.json (or `--out FILE`).
 * `--statistics` runs the router-aware expert statistics study instead (bench/kl-statistics.ts).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { oneshot } from "../src/pipeline/oneshot.js";
import { type KlStats, evaluate } from "../src/pipeline/eval.js";
import { BUNDLED_MODEL, PACKAGE_ROOT } from "../src/paths.js";
import { CheckpointFormatError } from "../src/errors.js";
import { studyStatistics } from "./kl-statistics.js";

const SETS = ["prose", "json", "arith"] as const;
const ROUTED_ONLY = ["re:.*self_attn.*", "re:.*shared_experts.*", "re:^model\\.layers\\.0\\.mlp\\..*"];

/** Overwrites the named tensors of a checkpoint folder with zero bytes, in place (bench only). */
function zeroTensors(dir: string, names: string[]): void {
  const index = path.join(dir, "model.safetensors.index.json");
  const weightMap = fs.existsSync(index)
    ? (JSON.parse(fs.readFileSync(index, "utf8")) as { weight_map: Record<string, string> }).weight_map
    : null;
  for (const name of names) {
    const file = path.join(dir, weightMap ? (weightMap[name] ?? "") : "model.safetensors");
    const fd = fs.openSync(file, "r+");
    try {
      const len = Buffer.alloc(8);
      fs.readSync(fd, len, 0, 8, 0);
      const headerBytes = Number(len.readBigUInt64LE(0));
      const header = Buffer.alloc(headerBytes);
      fs.readSync(fd, header, 0, headerBytes, 8);
      const entry = (JSON.parse(header.toString("utf8")) as Record<string, { data_offsets: [number, number] }>)[name];
      if (!entry) throw new CheckpointFormatError(`${file}: no tensor ${name}`);
      const [begin, end] = entry.data_offsets;
      fs.writeSync(fd, Buffer.alloc(end - begin), 0, end - begin, 8 + headerBytes + begin);
    } finally {
      fs.closeSync(fd);
    }
  }
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

async function main(): Promise<void> {
  if (process.argv.includes("--statistics")) {
    await studyStatistics();
    return;
  }
  const seeds = arg("--seeds", "42").split(",").map(Number);
  const schemes = arg("--schemes", "W4A16").split(",");
  const groupSize = Number(arg("--group-size", "32"));
  const textDir = path.join(PACKAGE_ROOT, "test", "fixtures", "text");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-kl-"));
  const rows: Record<string, unknown>[] = [];
  console.log("| scheme | seed | experts calibrated | fallbacks | KL prose | KL JSON | KL arith |");
  console.log("|---|---:|---|---:|---:|---:|---:|");
  type Measured = { kl: Record<string, number>; stats: Record<string, KlStats | null> };
  const klOf = async (dir: string): Promise<Measured> => {
    const m: Measured = { kl: {}, stats: {} };
    for (const s of SETS) {
      const r = await evaluate({ model: dir, reference: BUNDLED_MODEL, dataset: path.join(textDir, `eval-${s}.jsonl`), maxSeqLength: 128 });
      m.kl[s] = r.kl ?? NaN;
      m.stats[s] = r.klStats;
    }
    return m;
  };
  for (const scheme of schemes) {
    const runs: { seed: number; method: "gptq" | "rtn"; all: boolean }[] = [];
    // round-to-nearest, no Hessian: the baseline that uses no calibration data for the weights
    if (!process.argv.includes("--no-rtn")) runs.push({ seed: seeds[0] ?? 42, method: "rtn", all: true });
    for (const seed of seeds) runs.push({ seed, method: "gptq", all: true }, { seed, method: "gptq", all: false });
    for (const { seed, method, all } of runs) {
      const out = path.join(tmp, `${scheme}-${seed}-${method}-${all}`);
      const { report } = await oneshot({
        scheme,
        method,
        groupSize: scheme.startsWith("W4") || scheme === "W8A16" ? groupSize : undefined,
        numSamples: 16,
        maxSeqLength: 128,
        calibrateAllExperts: all,
        ignore: ROUTED_ONLY,
        seed,
        output: out,
        warn: () => undefined,
      });
      const row = (label: string, { kl, stats }: Measured): void => {
        rows.push({
          scheme,
          seed,
          method,
          calibrate_all_experts: all,
          variant: label,
          fallbacks: report.fallbacks.length,
          fallback_modules: report.fallbacks.map((f) => f.module),
          kl,
          kl_stats: stats,
        });
        console.log(
          `| ${scheme} | ${seed} | ${label} | ${report.fallbacks.length} | ${SETS.map((s) => (kl[s] as number).toExponential(2)).join(" | ")} |`,
        );
      };
      row(method === "rtn" ? "none (RTN weights)" : all ? "all" : "routed only", await klOf(out));
      const starved = report.fallbacks.filter((f) => f.reason === "no-calibration-rows").map((f) => `${f.module}.weight_scale`);
      if (!all && starved.length > 0 && scheme.startsWith("W")) {
        zeroTensors(out, starved);
        row("routed only, starved zeroed", await klOf(out));
      }
      fs.rmSync(out, { recursive: true, force: true });
    }
  }
  fs.writeFileSync(
    path.resolve(arg("--out", path.join(PACKAGE_ROOT, "bench", "kl-results.json"))),
    `${JSON.stringify({ date: new Date().toISOString(), rows }, null, 2)}\n`,
  );
}

await main();

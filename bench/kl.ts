/**
 * Quality of calibrating every expert vs routed tokens only, on the bundled model:
 * oneshot (routed experts only, as the pipeline issue specifies) then eval against the BF16
 * model on the held-out sets, for several schemes and seeds. `npm run bench:kl [-- --seeds 42,1,2]`.
 * Prints a markdown table and writes bench/kl-results.json.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { oneshot } from "../src/pipeline/oneshot.js";
import { evaluate } from "../src/pipeline/eval.js";
import { BUNDLED_MODEL, PACKAGE_ROOT } from "../src/paths.js";

const SETS = ["prose", "json", "arith"] as const;
const ROUTED_ONLY = ["re:.*self_attn.*", "re:.*shared_experts.*", "re:^model\\.layers\\.0\\.mlp\\..*"];

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

async function main(): Promise<void> {
  const seeds = arg("--seeds", "42").split(",").map(Number);
  const schemes = arg("--schemes", "W4A16").split(",");
  const groupSize = Number(arg("--group-size", "32"));
  const textDir = path.join(PACKAGE_ROOT, "test", "fixtures", "text");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-kl-"));
  const rows: Record<string, unknown>[] = [];
  console.log("| scheme | seed | experts calibrated | fallbacks | KL prose | KL JSON | KL arith |");
  console.log("|---|---:|---|---:|---:|---:|---:|");
  for (const scheme of schemes) {
    for (const seed of seeds) {
      for (const all of [true, false]) {
        const out = path.join(tmp, `${scheme}-${seed}-${all}`);
        const { report } = await oneshot({
          scheme, groupSize: scheme.startsWith("W4") || scheme === "W8A16" ? groupSize : undefined, numSamples: 16, maxSeqLength: 128,
          calibrateAllExperts: all, ignore: ROUTED_ONLY, seed, output: out, warn: () => undefined,
        });
        const kl: Record<string, number> = {};
        for (const s of SETS) {
          const r = await evaluate({ model: out, reference: BUNDLED_MODEL, dataset: path.join(textDir, `eval-${s}.jsonl`), maxSeqLength: 128 });
          kl[s] = r.kl ?? NaN;
        }
        rows.push({ scheme, seed, calibrate_all_experts: all, fallbacks: report.fallbacks.length, kl });
        console.log(`| ${scheme} | ${seed} | ${all ? "all" : "routed only"} | ${report.fallbacks.length} | ${SETS.map((s) => (kl[s] as number).toExponential(2)).join(" | ")} |`);
        fs.rmSync(out, { recursive: true, force: true });
      }
    }
  }
  fs.writeFileSync(path.join(PACKAGE_ROOT, "bench", "kl-results.json"), JSON.stringify({ date: new Date().toISOString(), rows }, null, 2) + "\n");
}

await main();

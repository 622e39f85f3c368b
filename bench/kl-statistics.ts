/**
 * Router-aware expert statistics judged over many calibration draws in two regimes
 * (`npm run bench:kl -- --statistics [--draws 20] [--out FILE]`): experts-only W4A16 g32 GPTQ of
 * the bundled model, 16 x 128-token draws (seed = draw number) from (a) the prose calibration
 * set, (b) a mix of prose, JSON and arithmetic samples (bench/mixed-calibration.ts), KL against
 * the unquantized model on the three evaluation sets. Every setting runs on the same draws, so
 * differences are paired. Prints a markdown table per regime (mean KL per set, draws won
 * against the seed's setting, ratio of means with a bootstrap 95% interval) and writes every
 * run to bench/kl-statistics.json, after each run (a partial study survives an interruption).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { oneshot } from "../src/pipeline/oneshot.js";
import { type ReferenceLogits, evaluate, referenceLogits } from "../src/pipeline/eval.js";
import { BUNDLED_MODEL, PACKAGE_ROOT } from "../src/paths.js";
import { mixedCalibration } from "./mixed-calibration.js";
import { rng } from "../src/util/random.js";

const SETS = ["prose", "json", "arith"] as const;
const EXPERTS_ONLY = ["re:.*self_attn.*", "re:.*shared_experts.*", "re:^model\\.layers\\.0\\.mlp\\..*"];
/** [--expert-statistics, --routed-weight]; the first is the seed's */
const SETTINGS: [string, string][] = [
  ["uniform", "one"],
  ["unrouted:0.3", "one"],
  ["unrouted:0.1", "one"],
  ["unrouted:0.03", "one"],
  ["unrouted:0.1", "score"],
  ["unrouted:0.1", "score2"],
  ["shrink:16", "one"],
  ["shrink:64", "one"],
  ["shrink:256", "one"],
];

interface Run {
  regime: string;
  draw: number;
  statistics: string;
  routed_weight: string;
  kl: Record<string, number>;
  all_token_fallbacks: number;
  oneshot_seconds: number;
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

/** Seeded bootstrap of the ratio of mean KL, setting / seed's, over paired draws. */
function bootstrapRatio(a: number[], b: number[], reps = 4000): [number, number] {
  const next = rng(12345);
  const n = a.length;
  const ratios: number[] = [];
  for (let r = 0; r < reps; r++) {
    let sa = 0;
    let sb = 0;
    for (let i = 0; i < n; i++) {
      const k = Math.floor(next() * n);
      sa += a[k] as number;
      sb += b[k] as number;
    }
    ratios.push(sa / sb);
  }
  ratios.sort((x, y) => x - y);
  return [ratios[Math.floor(0.025 * reps)] as number, ratios[Math.floor(0.975 * reps)] as number];
}

/** Markdown table of one regime's runs against the seed's setting. */
export function summarize(runs: Run[], regime: string): string {
  const key = (r: Run): string => `${r.statistics} ${r.routed_weight}`;
  const base = runs.filter((r) => r.regime === regime && key(r) === "uniform one");
  const lines = [
    `| ${regime}: setting | draws | ${SETS.map((s) => `KL ${s} (mean) | ratio [95% CI] | wins`).join(" | ")} |`,
    `|---|---:|${SETS.map(() => "---:|---|---:").join("|")}|`,
  ];
  for (const [st, w] of SETTINGS) {
    const rs = runs.filter((r) => r.regime === regime && key(r) === `${st} ${w}`);
    const paired = rs.flatMap((r) => {
      const b = base.find((x) => x.draw === r.draw);
      return b ? [[r, b] as const] : [];
    });
    if (paired.length === 0) continue;
    const cells = SETS.map((s) => {
      const a = paired.map(([r]) => r.kl[s] as number);
      const b = paired.map(([, x]) => x.kl[s] as number);
      const mean = a.reduce((x, y) => x + y, 0) / a.length;
      const ratio = mean / (b.reduce((x, y) => x + y, 0) / b.length);
      const [lo, hi] = bootstrapRatio(a, b);
      const wins = a.filter((v, i) => v < (b[i] as number)).length;
      return `${mean.toExponential(3)} | ${ratio.toFixed(3)} [${lo.toFixed(3)}, ${hi.toFixed(3)}] | ${wins}/${a.length}`;
    });
    lines.push(`| ${st}, ${w} | ${paired.length} | ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

export async function studyStatistics(): Promise<void> {
  const draws = Number(arg("--draws", "20"));
  const outFile = path.resolve(arg("--out", path.join(PACKAGE_ROOT, "bench", "kl-statistics.json")));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-klstats-"));
  const text = path.join(PACKAGE_ROOT, "test", "fixtures", "text");
  const regimes: [string, string][] = [
    ["prose", path.join(text, "calib-prose.jsonl")],
    ["mixed", mixedCalibration(tmp)],
  ];
  const refs = new Map<string, ReferenceLogits>();
  for (const s of SETS)
    refs.set(s, await referenceLogits(BUNDLED_MODEL, { dataset: path.join(text, `eval-${s}.jsonl`), maxSeqLength: 128 }));
  const runs: Run[] = [];
  const started = Date.now();
  const total = regimes.length * draws * SETTINGS.length;
  for (let draw = 1; draw <= draws; draw++) {
    for (const [regime, dataset] of regimes) {
      for (const [statistics, routedWeight] of SETTINGS) {
        const out = path.join(tmp, "out");
        const t0 = performance.now();
        const { report } = await oneshot({
          dataset,
          scheme: "W4A16",
          groupSize: 32,
          numSamples: 16,
          maxSeqLength: 128,
          ignore: EXPERTS_ONLY,
          expertStatistics: statistics,
          routedWeight,
          seed: draw,
          output: out,
          overwrite: true,
          warn: () => undefined,
        });
        const oneshotSeconds = (performance.now() - t0) / 1000;
        const kl: Record<string, number> = {};
        for (const s of SETS)
          kl[s] =
            (await evaluate({ model: out, reference: refs.get(s), dataset: path.join(text, `eval-${s}.jsonl`), maxSeqLength: 128 })).kl ??
            NaN;
        runs.push({
          regime,
          draw,
          statistics,
          routed_weight: routedWeight,
          kl,
          all_token_fallbacks: report.expert_statistics?.all_token_fallbacks.length ?? 0,
          oneshot_seconds: oneshotSeconds,
        });
        fs.writeFileSync(outFile, `${JSON.stringify({ date: new Date().toISOString(), draws, runs }, null, 2)}\n`);
        const elapsed = (Date.now() - started) / 1000;
        console.error(
          `[${runs.length}/${total}] ${regime} draw ${draw} ${statistics} ${routedWeight}: ${SETS.map((s) => (kl[s] as number).toExponential(2)).join(" ")} (eta ${((elapsed / runs.length) * (total - runs.length)).toFixed(0)} s)`,
        );
      }
    }
  }
  for (const [regime] of regimes) console.log(`\n${summarize(runs, regime)}`);
}

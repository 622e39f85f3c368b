/**
 * `npm run bench:oneshot` (and the last section of `npm run bench`): oneshot end to end on random
 * models of served shapes, each as its own process, against the engine's GEMM rate measured in the
 * same run, just before each model. For each run: seconds, tokens, peak RSS, the model's
 * config.json, seconds per phase, the floating-point work the plan counts (formula in
 * docs/performance.md, "The plan's model"), the fraction of the GEMM rate reached end to end, and
 * the machine (bench/machine.ts: CPU, FMA peak on one thread and on all, steal over the run).
 * Merges the result into bench/results.json (`oneshot`) and appends it to bench/oneshot-runs.json.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { OrtEngine } from "../src/engine/index.js";
import { PACKAGE_ROOT } from "../src/paths.js";
import { MoecalError } from "../src/errors.js";
import { GEMM_SHAPES, gemmGflops } from "./gemm.js";
import { type EndToEnd, measure, moonlightSetup, nanoSetup, qwen35Setup, qwen3Setup } from "./plan.js";
import { Tensor } from "../src/engine/tensor.js";
import { openServed } from "../src/pipeline/serving.js";
import { loadParameters } from "../src/nn/weights.js";
import { benchExpertGroups, expertGroupsRows, recordExpertGroups } from "./expert-groups.js";
import { type CpuFacts, cpuFacts, cpuTicks, peakRunner, stealShare } from "./machine.js";

/** The large GEMM shapes' best ~40 ms window over `rounds` rounds (the bench's GEMM rate). */
export async function gemmRate(engine: OrtEngine, rounds = 3): Promise<number> {
  let best = 0;
  for (let r = 0; r < rounds; r++)
    for (const [m, k, n] of GEMM_SHAPES.filter(([m]) => m >= 512)) best = Math.max(best, (await gemmGflops(engine, m, k, n, 0.5)).best);
  return best;
}

export interface OneshotBench extends EndToEnd {
  /** the engine's GEMM rate measured just before this run, GFLOP/s */
  gemm_gflops: number;
  /** the same, measured just after it */
  gemm_after_gflops: number;
  /** the plan's counted work / seconds, GFLOP/s */
  gflops: number;
  /** against the GEMM rate measured before the run */
  fraction_of_gemm: number;
  /** against the GEMM rate measured after it */
  fraction_of_gemm_after: number;
  flops_formula: string;
  /** the CPU, and its fp32 FMA peak on one thread and on all measured just before the run (null without gcc) */
  cpu: CpuFacts;
  peak_one_thread_gflops: number | null;
  peak_all_threads_gflops: number | null;
  /** the share of the machine's CPU time the hypervisor took during the run (null off Linux) */
  steal_share: number | null;
  /** Qwen3.5: the Gated DeltaNet layer's forward, timed alone on the run's token shape, x 2 passes (calibrate, propagate) / the run's seconds */
  gated_deltanet_share?: number;
}

/** Seconds of one forward of `module` (a token mixer) on random hidden states [batch, seq, H]. */
async function mixerSeconds(model: string, module: string, batch: number, seq: number): Promise<number> {
  const m = openServed(model, { load: false });
  loadParameters(m.model, m.source, m.mapping, (n) => n.startsWith(`${module}.`));
  const mixer = m.model.getSubmodule(module) as unknown as { call(x: Tensor): Promise<Tensor> };
  const H = m.model.getSubmodule("model.embed_tokens").parameter("weight").shape[1] as number;
  const x = new Tensor(
    Float32Array.from({ length: batch * seq * H }, (_, i) => Math.sin(i * 0.001) * 0.5),
    [batch, seq, H],
  );
  const t0 = performance.now();
  await mixer.call(x);
  return (performance.now() - t0) / 1000;
}

/**
 * The end-to-end runs: the 4-layer Nano-shaped model (64 x 512 tokens), a 2-layer
 * Qwen3-30B-A3B-shaped one (16 x 512), a 2-layer Moonlight-16B-A3B-shaped DeepSeek-V3 stored in
 * FP8 blocks (16 x 512) and a 2-layer Qwen3.5-35B-A3B-shaped hybrid (16 x 512); `only` names a subset.
 */
export async function benchOneshot(
  work: string,
  log: (s: string) => void,
  only: readonly string[] = [],
  none = false,
): Promise<OneshotBench[]> {
  if (none) return [];
  const engine = new OrtEngine();
  const runPeak = peakRunner(work);
  const runs: OneshotBench[] = [];
  const { data } = nanoSetup(work, { model: false });
  const setups: [string, () => string, string][] = [
    ["nano4", () => nanoSetup(work).model, "64"],
    ["qwen3_30b_a3b_2layer", () => qwen3Setup(work), "16"],
    ["moonlight_16b_a3b_2layer_fp8", () => moonlightSetup(work), "16"],
    ["qwen3_5_35b_a3b_2layer", () => qwen35Setup(work), "16"],
  ];
  const unknown = only.filter((n) => !setups.some(([s]) => s === n));
  if (unknown.length) throw new MoecalError("E_BENCH", `unknown run(s) ${unknown.join(", ")} (${setups.map(([s]) => s).join(", ")})`);
  const cases = setups.filter(([n]) => only.length === 0 || only.includes(n)).map(([n, setup, samples]) => [n, setup(), samples] as const);
  for (const [name, model, samples] of cases) {
    log(`${name}: fp32 peak on one thread and on all, engine GEMM rate`);
    const peakOne = runPeak ? runPeak(5, 1) : null;
    const peakAll = runPeak ? runPeak(5) : null;
    const gemm = await gemmRate(engine);
    log(`${name}: oneshot, ${samples} x 512 tokens (minutes)`);
    const ticks = cpuTicks();
    const e = measure(
      name,
      model,
      ["--dataset", data, "--num-samples", samples, "--max-seq-length", "512"],
      path.join(work, `${name}-out`),
    );
    const steal = stealShare(ticks, cpuTicks());
    log(`${name}: engine GEMM rate again`);
    const after = await gemmRate(engine);
    const gflops = e.planned.flops / e.seconds / 1e9;
    const hybrid = name.startsWith("qwen3_5")
      ? { gated_deltanet_share: (2 * (await mixerSeconds(model, "model.layers.0.linear_attn", Number(samples), 512))) / e.seconds }
      : {};
    runs.push({
      ...e,
      gemm_gflops: gemm,
      gemm_after_gflops: after,
      gflops,
      fraction_of_gemm: gflops / gemm,
      fraction_of_gemm_after: gflops / after,
      flops_formula: "docs/performance.md#the-plans-model",
      cpu: cpuFacts(),
      peak_one_thread_gflops: peakOne,
      peak_all_threads_gflops: peakAll,
      steal_share: steal,
      ...hybrid,
    });
    fs.rmSync(path.join(work, `${name}-out`), { recursive: true, force: true });
  }
  return runs;
}

function commit(): string | null {
  const r = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: PACKAGE_ROOT, encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** Record `runs` in bench/results.json (`oneshot`) and append them to bench/oneshot-runs.json. */
export function recordOneshot(runs: OneshotBench[], results?: Record<string, unknown>): Record<string, unknown> {
  const date = new Date().toISOString();
  const file = path.join(PACKAGE_ROOT, "bench", "results.json");
  const base = results ?? (fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>) : {});
  // a run of some models (`npm run bench:oneshot -- NAME`) keeps the others' last results
  const previous = ((base.oneshot as { runs?: OneshotBench[] } | undefined)?.runs ?? []).filter(
    (r) => !runs.some((x) => x.name === r.name),
  );
  const merged = { ...base, oneshot: { date, runs: [...previous, ...runs] } };
  fs.writeFileSync(file, `${JSON.stringify(merged, null, 2)}\n`);
  const historyFile = path.join(PACKAGE_ROOT, "bench", "oneshot-runs.json");
  const history = fs.existsSync(historyFile) ? (JSON.parse(fs.readFileSync(historyFile, "utf8")) as unknown[]) : [];
  history.push({
    date,
    commit: commit(),
    runs: runs.map((r) => ({
      name: r.name,
      tokens: r.tokens,
      seconds: r.seconds,
      peak_rss_mb: r.peak_rss_mb,
      flops: r.planned.flops,
      gemm_gflops: r.gemm_gflops,
      gemm_after_gflops: r.gemm_after_gflops,
      fraction_of_gemm: r.fraction_of_gemm,
      fraction_of_gemm_after: r.fraction_of_gemm_after,
      cpu: r.cpu,
      peak_one_thread_gflops: r.peak_one_thread_gflops,
      peak_all_threads_gflops: r.peak_all_threads_gflops,
      steal_share: r.steal_share,
      phases: r.phases,
    })),
  });
  fs.writeFileSync(historyFile, `${JSON.stringify(history, null, 2)}\n`);
  return merged;
}

/** The machine during a run, in words: CPU family/model, FMA peak one thread / all, steal. */
function machineCell(r: OneshotBench): string {
  const f = (v: number | null): string => (v === null ? "-" : v.toFixed(1));
  const steal = r.steal_share === null ? "-" : `${(100 * r.steal_share).toFixed(1)}%`;
  return `family ${r.cpu.family ?? "-"} model ${r.cpu.model ?? "-"}, peak ${f(r.peak_one_thread_gflops)} / ${f(r.peak_all_threads_gflops)} GFLOP/s (1 / ${r.cpu.threads} threads), steal ${steal}`;
}

/** Markdown rows of the runs. */
export function oneshotRows(runs: OneshotBench[]): string[] {
  return runs.map(
    (r) =>
      `| oneshot ${r.name}, ${r.tokens} tokens | ${r.seconds.toFixed(1)} s, peak RSS ${r.peak_rss_mb.toFixed(0)} MB | ${(r.planned.flops / 1e12).toFixed(2)} TFLOP, ${r.gflops.toFixed(1)} GFLOP/s = ${r.fraction_of_gemm.toFixed(2)} / ${r.fraction_of_gemm_after.toFixed(2)} of the GEMM rate before / after (${r.gemm_gflops.toFixed(1)} / ${r.gemm_after_gflops.toFixed(1)}); ${machineCell(r)} |`,
  );
}

/** A run's host as the bench recorded it (CPU family and model), or null for a run recorded before it did. */
const hostOf = (r: { cpu?: CpuFacts }): string | null => (r.cpu ? `family ${r.cpu.family} model ${r.cpu.model}` : null);

/**
 * Per model, the fractions of its last `n` recorded runs (bench/oneshot-runs.json) that counted the
 * same work as its latest (a change of the plan's count, or of the tokens, starts a new series) on
 * the same host (a run without a recorded host only with others without), and their spread.
 */
function spreadLines(names: string[], n: number): string[] {
  const history = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, "bench", "oneshot-runs.json"), "utf8")) as {
    commit: string | null;
    runs: { name: string; flops: number; fraction_of_gemm: number; fraction_of_gemm_after?: number; cpu?: CpuFacts }[];
  }[];
  return names.map((name) => {
    const all = history.flatMap((h) => h.runs.filter((r) => r.name === name).map((r) => ({ ...r, commit: h.commit })));
    const latest = all.at(-1);
    const host = latest ? hostOf(latest) : null;
    const last = all.filter((r) => r.flops === latest?.flops && hostOf(r) === host).slice(-n);
    const worst = last.map((r) => Math.min(r.fraction_of_gemm, r.fraction_of_gemm_after ?? r.fraction_of_gemm));
    const list = last.map((r) => `${r.fraction_of_gemm.toFixed(2)}/${(r.fraction_of_gemm_after ?? Number.NaN).toFixed(2)} (${r.commit})`);
    return `${name}, last ${last.length} run(s) on ${host ?? "an unrecorded host"}, fraction before/after: ${list.join(", ")}; lowest ${Math.min(...worst).toFixed(2)}, spread ${(Math.max(...worst) - Math.min(...worst)).toFixed(2)}`;
  });
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-oneshot-"));
  const log = (s: string): void => void process.stderr.write(`${new Date().toISOString()} bench:oneshot: ${s}\n`);
  try {
    const only = process.argv.slice(2);
    const groups = only.length === 0 || only.includes("expert_groups");
    const runs = await benchOneshot(
      work,
      log,
      only.filter((n) => n !== "expert_groups"),
      only.length > 0 && only.every((n) => n === "expert_groups"),
    );
    if (runs.length > 0) {
      recordOneshot(runs);
      console.log("| run | time, memory | work, rate; machine |");
      console.log("|---|---|---|");
      for (const l of oneshotRows(runs)) console.log(l);
      for (const l of spreadLines(
        runs.map((r) => r.name),
        3,
      ))
        console.log(l);
    }
    if (groups) {
      const r = await benchExpertGroups(work, log);
      recordExpertGroups(r);
      for (const l of expertGroupsRows(r)) console.log(l);
    }
  } catch (e) {
    if (e instanceof MoecalError) process.stderr.write(`${e.message}\n`);
    throw e;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();

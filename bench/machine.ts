/**
 * What the machine is while a bench runs, measured rather than guessed from the GEMM rate: the CPU
 * (model, family and model number, so hosts of different vector widths can be told apart), the fp32
 * FMA peak on one thread and on all (bench/peak.c; their ratio says whether the second vCPU is
 * wholly this machine's), and the share of CPU time the hypervisor took (steal, /proc/stat) over a run.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { PACKAGE_ROOT } from "../src/paths.js";

export interface CpuFacts {
  /** `model name` of /proc/cpuinfo (os.cpus() elsewhere) */
  model_name: string | null;
  /** `cpu family` and `model` of /proc/cpuinfo: AMD family 25 model 17 is Zen 4 (Genoa), 26 is Zen 5 */
  family: number | null;
  model: number | null;
  threads: number;
}

function cpuinfoField(text: string, field: string): string | null {
  const m = new RegExp(`^${field}\\s*:\\s*(.*)$`, "m").exec(text);
  return m?.[1]?.trim() ?? null;
}

export function cpuFacts(): CpuFacts {
  const text = fs.existsSync("/proc/cpuinfo") ? fs.readFileSync("/proc/cpuinfo", "utf8") : "";
  const family = cpuinfoField(text, "cpu family");
  const model = cpuinfoField(text, "model");
  return {
    model_name: cpuinfoField(text, "model name") ?? os.cpus()[0]?.model ?? null,
    family: family === null ? null : Number(family),
    model: model === null ? null : Number(model),
    threads: os.availableParallelism(),
  };
}

/** All CPU ticks and the stolen ones so far (the first line of /proc/stat), null off Linux. */
export function cpuTicks(): { total: number; steal: number } | null {
  if (!fs.existsSync("/proc/stat")) return null;
  const first = fs.readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
  // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
  const v = first.trim().split(/\s+/).slice(1, 9).map(Number);
  if (v.length < 8 || v.some((x) => !Number.isFinite(x))) return null;
  return { total: v.reduce((a, b) => a + b, 0), steal: v[7] as number };
}

/** The share of CPU ticks stolen between two readings of `cpuTicks`. */
export function stealShare(before: { total: number; steal: number } | null, after: { total: number; steal: number } | null): number | null {
  if (!before || !after || after.total <= before.total) return null;
  return (after.steal - before.steal) / (after.total - before.total);
}

/**
 * bench/peak.c compiled into `work`: a function giving the best of `reps` FMA-loop windows on
 * `threads` threads (default: all), GFLOP/s; null without gcc.
 */
export function peakRunner(work: string): ((reps: number, threads?: number) => number | null) | null {
  const exe = path.join(work, "peak");
  const cc = spawnSync(
    "gcc",
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", path.join(PACKAGE_ROOT, "bench", "peak.c"), "-o", exe],
    { encoding: "utf8" },
  );
  if (cc.error || cc.status !== 0) return null;
  return (reps, threads = os.availableParallelism()) => {
    const r = spawnSync(exe, [String(reps)], { encoding: "utf8", env: { ...process.env, OMP_NUM_THREADS: String(threads) } });
    const v = Number(r.stdout.trim());
    return r.status === 0 && v > 0 ? v : null;
  };
}

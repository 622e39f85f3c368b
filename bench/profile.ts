/**
 * `npm run bench:profile -- MODEL DATASET [SAMPLES]`: where oneshot's seconds go, per layer and
 * phase: the time inside each kind of engine call (the engine's methods wrapped with timers, named
 * by their caller) and the rest, outside the engine (TypeScript work, I/O, waiting for the GPTQ
 * workers, which run their own engines). Samples of 512 tokens (default 16). Then, from V8's
 * sampling profiles of every thread (the run is repeated under `node --cpu-prof`), the items
 * outside the engine by function. docs/performance.md has profiles taken with it. `npm run
 * bench:profile` starts it as the `moecal` command starts the CLI (src/cli/moecal.ts: V8's flags,
 * glibc's huge pages), so that the profile is of the process a user runs.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { getEngine } from "../src/engine/index.js";
import { oneshot } from "../src/pipeline/oneshot.js";
import { UsageError } from "../src/errors.js";
import { spawnSync } from "node:child_process";
import { itemsTable, threadItems } from "./cpu-profile.js";

const METHODS = ["linear", "matmul", "gram", "subtractProduct", "swiglu", "swigluExpert", "attention", "rmsNorm", "sigmoidGate"] as const;
type EngineMethod = (typeof METHODS)[number];

/** What an engine call is for, from the method and its caller's stack. */
function label(method: EngineMethod, stack: string): string {
  if (method === "attention") return "attention heads (scores, softmax, values)";
  if (method === "rmsNorm") return "RMSNorm";
  if (method === "sigmoidGate") return "sigmoid gates";
  const fast = stack.includes("fast-path");
  if (method === "swigluExpert")
    return fast ? "experts: gate/up, SwiGLU, down_proj Gram (all tokens)" : "SwiGLU MLPs (dense, shared, routed)";
  if (method === "gram") return stack.includes("observers") ? "Gram products of non-expert Linears" : "experts: shared gate/up Gram";
  if (stack.includes("attention")) return "attention products";
  if (fast && method === "linear") return "experts: routed down_proj";
  return method === "swiglu" ? "SwiGLU (hooked MLPs)" : "other products (q/k/v/o, router, MLPs with hooks)";
}

/** The same run under `node --cpu-prof`, every thread's items outside the engine printed. */
function sampled(args: string[]): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-cpu-profile-"));
  try {
    const r = spawnSync(process.execPath, [...process.execArgv, "--cpu-prof", "--cpu-prof-dir", dir, process.argv[1] as string, ...args], {
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, MOECAL_PROFILE_SAMPLED: "1" },
    });
    if (r.status !== 0) throw new UsageError(`the sampled run failed (exit ${r.status})`);
    const threads = fs.readdirSync(dir).map((f) => threadItems(path.join(dir, f)));
    console.log("\nSampled (V8 profiles, 1 ms), per thread, largest first:\n");
    for (const t of threads.sort((a, b) => b.seconds - a.seconds)) for (const l of itemsTable(t, 0.1)) console.log(l);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const [model, dataset, samples = "16"] = args;
  if (!model || !dataset) throw new UsageError("usage: npm run bench:profile -- MODEL DATASET [SAMPLES]");
  const wasSampled = process.env.MOECAL_PROFILE_SAMPLED === "1";
  const engine = getEngine() as unknown as Record<EngineMethod, (...a: unknown[]) => Promise<unknown>>;
  let phase = "setup";
  const inEngine = new Map<string, Map<string, number>>();
  // the sampled run is not timed call by call: its stack traces and timers would be in the samples
  for (const m of wasSampled ? [] : METHODS) {
    const f = engine[m].bind(engine);
    engine[m] = async (...a: unknown[]) => {
      const key = label(m, new Error().stack ?? "");
      const t0 = performance.now();
      try {
        return await f(...a);
      } finally {
        const byKey = inEngine.get(phase) ?? new Map<string, number>();
        byKey.set(key, (byKey.get(key) ?? 0) + performance.now() - t0);
        inEngine.set(phase, byKey);
      }
    };
  }
  const wall = new Map<string, number>();
  let since = performance.now();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-profile-"));
  try {
    await oneshot({
      model,
      dataset,
      numSamples: Number(samples),
      maxSeqLength: 512,
      output: path.join(out, "model"),
      onProgress: (e) => {
        if (e.kind !== "phase") return;
        const now = performance.now();
        wall.set(phase, (wall.get(phase) ?? 0) + now - since);
        since = now;
        phase = `layer ${e.layer} ${e.phase}`;
      },
    });
    wall.set(phase, (wall.get(phase) ?? 0) + performance.now() - since);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
  console.log("| layer, phase | seconds | of which |");
  console.log("|---|---:|---|");
  for (const [p, ms] of wall) {
    const parts = [...(inEngine.get(p) ?? new Map<string, number>())].sort((a, b) => b[1] - a[1]);
    const engineMs = parts.reduce((a, [, v]) => a + v, 0);
    const list = [...parts, ["outside the engine", ms - engineMs] as [string, number]].map(([k, v]) => `${k} ${(v / 1000).toFixed(2)}`);
    console.log(`| ${p} | ${(ms / 1000).toFixed(2)} | ${list.join("; ")} |`);
  }
  if (!wasSampled) sampled(args);
}

await main();

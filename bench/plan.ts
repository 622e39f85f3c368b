/**
 * `npm run bench:plan`: the plan against real oneshot runs, each as a separate process (its peak
 * RSS its own): the bundled model (its default calibration set) and a 4-layer Nano-shaped random
 * model (64 x 512 tokens). For each: planned vs measured seconds and peak RSS, and the measured
 * seconds per phase (calibrate, quantize, propagate, write), read from oneshot's timestamped
 * progress lines. Writes bench/plan-results.json.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { runFromSummary } from "../src/pipeline/report.js";
import { PACKAGE_ROOT } from "../src/paths.js";
import { MoecalError } from "../src/errors.js";
import { QWEN3_5_MOE_FAMILY } from "../src/models/qwen3_next/family.js";

/** The `moecal` command (its launcher, so that the allocator setting applies as for a user): every bench starts this. */
export const cli = path.join(PACKAGE_ROOT, "dist", "src", "cli", "moecal.js");

export interface EndToEnd {
  name: string;
  /** the model's config.json */
  config: Record<string, unknown>;
  tokens: number;
  seconds: number;
  peak_rss_mb: number;
  /** seconds per phase, summed over layers (plus "setup": before the first layer, "assemble": after the last) */
  phases: Record<string, number>;
  planned: { seconds: number; peak_memory_mb: number; gemm_gflops: number; flops: number; expert_group_size: number | null };
  /** planned / measured */
  plan_ratio: { seconds: number; peak_memory: number };
}

/** Seconds per phase from oneshot's non-terminal progress lines (each starts with an ISO time). */
export function phaseSeconds(stderr: string, wallSeconds: number): Record<string, number> {
  const events = stderr
    .split("\n")
    .map((l) => /^(\S+Z) (.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ t: Date.parse(m[1] as string) / 1000, text: m[2] as string }));
  const phases: Record<string, number> = {};
  const add = (k: string, s: number): void => {
    phases[k] = (phases[k] ?? 0) + s;
  };
  let current = "setup";
  let since = events[0]?.t ?? 0;
  for (const e of events) {
    const phase =
      /^layer \d+\/\d+: (calibrate|quantize|propagate|write)$/.exec(e.text)?.[1] ??
      (/^layer \d+\/\d+: experts \d+-\d+ \(group/.test(e.text) ? "expert groups" : undefined);
    const done = /^layer \d+\/\d+: \d+ Linear quantized/.test(e.text);
    if (!phase && !done) continue;
    add(current, e.t - since);
    since = e.t;
    current = phase ?? "assemble";
  }
  // the time before the first line and after the last one (assembling the output, writing the report)
  const total = Object.values(phases).reduce((a, b) => a + b, 0);
  add("assemble", Math.max(0, wallSeconds - total));
  return phases;
}

/** Plan, then run oneshot on `model` with `args`, in separate processes. */
export function measure(name: string, model: string, args: string[], out: string): EndToEnd {
  const common = ["--model", model, ...args];
  const planRun = spawnSync(process.execPath, [cli, "plan", ...common, "--json"], { encoding: "utf8" });
  if (planRun.status !== 0) throw new MoecalError("E_BENCH", `plan failed: ${planRun.stderr}`);
  const p = JSON.parse(planRun.stdout) as {
    seconds: number;
    peak_memory_bytes: number;
    gemm_gflops: number;
    tokens: number;
    layers: { flops: Record<string, number>; expert_groups: { size: number } | null }[];
  };
  const run = spawnSync(cli, ["oneshot", ...common, "--output", out, "--overwrite"], {
    encoding: "utf8",
    maxBuffer: 64 * 1024 ** 2,
  });
  const timing = runFromSummary(run.stdout);
  if (run.status !== 0 || !timing) throw new MoecalError("E_BENCH", `oneshot failed: ${run.stderr.slice(-800)}`);
  const flops = p.layers.reduce((a, l) => a + Object.values(l.flops).reduce((x, y) => x + y, 0), 0);
  return {
    name,
    config: JSON.parse(fs.readFileSync(path.join(model, "config.json"), "utf8")) as Record<string, unknown>,
    tokens: p.tokens,
    seconds: timing.wallSeconds,
    peak_rss_mb: timing.peakRssMb,
    phases: phaseSeconds(run.stderr, timing.wallSeconds),
    planned: {
      seconds: p.seconds,
      peak_memory_mb: p.peak_memory_bytes / 1024 ** 2,
      gemm_gflops: p.gemm_gflops,
      flops,
      expert_group_size: p.layers.find((l) => l.expert_groups)?.expert_groups?.size ?? null,
    },
    plan_ratio: { seconds: p.seconds / timing.wallSeconds, peak_memory: p.peak_memory_bytes / 1024 ** 2 / timing.peakRssMb },
  };
}

/** `moecal random-model` into `model` with these config fields (and other arguments). */
function randomModel(model: string, fields: Record<string, number | null>, args: string[]): void {
  const set = Object.entries(fields).flatMap(([k, v]) => ["--set", `${k}=${v}`]);
  const gen = spawnSync(process.execPath, [cli, "random-model", "--output", model, ...args, ...set], { encoding: "utf8" });
  if (gen.status !== 0) throw new MoecalError("E_BENCH", `random-model failed: ${gen.stderr}`);
}

/** A random model shaped like Qwen3-30B-A3B's layers (every layer MoE; 2 layers unless told), in `work`, optionally in FP8 blocks. */
export function qwen3Setup(work: string, opts: { layers?: number; fp8Block?: number } = {}): string {
  const layers = opts.layers ?? 2;
  const model = path.join(work, `qwen3-30b-a3b-${layers}layer${opts.fp8Block ? `-fp8-${opts.fp8Block}` : ""}`);
  randomModel(
    model,
    {
      hidden_size: 2048,
      num_experts: 128,
      num_experts_per_tok: 8,
      moe_intermediate_size: 768,
      intermediate_size: 6144,
      num_attention_heads: 32,
      num_key_value_heads: 4,
      head_dim: 128,
      max_position_embeddings: 2048,
    },
    ["--family", "qwen3_moe", "--layers", String(layers), ...(opts.fp8Block ? ["--fp8-block", String(opts.fp8Block)] : [])],
  );
  return model;
}

/**
 * A 2-layer random model shaped like Moonlight-16B-A3B (DeepSeek-V3 architecture: MLA without
 * query compression, layer 0 dense, 64 experts top-6, 2 shared), stored as the DeepSeek-V3 and
 * Kimi-K2 checkpoints are published: FP8 blocks of 128 x 128.
 */
export function moonlightSetup(work: string): string {
  const model = path.join(work, "moonlight-2layer-fp8");
  randomModel(
    model,
    {
      hidden_size: 2048,
      intermediate_size: 11264,
      moe_intermediate_size: 1408,
      n_routed_experts: 64,
      num_experts_per_tok: 6,
      n_shared_experts: 2,
      n_group: 1,
      topk_group: 1,
      first_k_dense_replace: 1,
      num_attention_heads: 16,
      q_lora_rank: null,
      kv_lora_rank: 512,
      qk_nope_head_dim: 128,
      qk_rope_head_dim: 64,
      v_head_dim: 128,
      rope_scaling: null,
      max_position_embeddings: 8192,
    },
    ["--family", "deepseek_v3", "--layers", "2", "--fp8-block", "128"],
  );
  return model;
}

/**
 * A 2-layer random Qwen3.5-MoE shaped like Qwen3.5-35B-A3B (H 2048, 256 experts top-8, Im 512, a
 * gated shared expert of 512; layer 0 a Gated DeltaNet with 16 key / 32 value heads of 128, layer 1
 * gated full attention with 16 heads of 256 and 2 KV heads), in `work`.
 */
export function qwen35Setup(work: string): string {
  const like = path.join(work, "qwen3_5-config");
  fs.mkdirSync(like, { recursive: true });
  const text = {
    ...(QWEN3_5_MOE_FAMILY.randomPreset.text_config as Record<string, unknown>),
    hidden_size: 2048,
    num_hidden_layers: 2,
    layer_types: ["linear_attention", "full_attention"],
    num_attention_heads: 16,
    num_key_value_heads: 2,
    head_dim: 256,
    linear_num_key_heads: 16,
    linear_num_value_heads: 32,
    linear_key_head_dim: 128,
    linear_value_head_dim: 128,
    num_experts: 256,
    num_experts_per_tok: 8,
    moe_intermediate_size: 512,
    shared_expert_intermediate_size: 512,
    max_position_embeddings: 4096,
  };
  fs.writeFileSync(path.join(like, "config.json"), JSON.stringify({ ...QWEN3_5_MOE_FAMILY.randomPreset, text_config: text }));
  const model = path.join(work, "qwen3_5-35b-a3b-2layer");
  randomModel(model, {}, ["--like", like]);
  return model;
}

/** A dataset of `count` samples of at least `bytes` bytes each: the bundled prose, concatenated. */
export function proseDataset(file: string, count: number, bytes: number): string {
  const texts = fs
    .readFileSync(path.join(PACKAGE_ROOT, "data", "calib-prose.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { text: string }).text);
  const lines: string[] = [];
  for (let i = 0; lines.length < count; i++) {
    let t = "";
    for (let j = i; Buffer.byteLength(t) < bytes; j++) t += (t ? " " : "") + texts[j % texts.length];
    lines.push(JSON.stringify({ text: t }));
  }
  fs.writeFileSync(file, `${lines.join("\n")}\n`);
  return file;
}

/** A 4-layer Nano-shaped random model and 64 prose samples of at least 512 tokens, in `work`. */
export function nanoSetup(work: string, opts: { model?: boolean } = {}): { model: string; data: string } {
  const model = path.join(work, "nano4");
  if (opts.model ?? true)
    randomModel(
      model,
      {
        hidden_size: 1024,
        num_experts: 128,
        num_experts_per_tok: 8,
        moe_intermediate_size: 256,
        intermediate_size: 3072,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 128,
      },
      ["--layers", "4"],
    );
  return { model, data: proseDataset(path.join(work, "long.jsonl"), 64, 600) };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-plan-"));
  const results: EndToEnd[] = [];
  const log = (s: string): void => void process.stderr.write(`${new Date().toISOString()} bench:plan: ${s}\n`);
  log("the bundled model, default options");
  results.push(measure("tiny-afmoe", path.join(PACKAGE_ROOT, "models", "tiny-afmoe"), [], path.join(work, "tiny-out")));
  log("a 4-layer Nano-shaped random model, 64 x 512 tokens (minutes)");
  const { model, data } = nanoSetup(work);
  results.push(measure("nano4", model, ["--dataset", data, "--num-samples", "64", "--max-seq-length", "512"], path.join(work, "nano-out")));
  fs.writeFileSync(
    path.join(PACKAGE_ROOT, "bench", "plan-results.json"),
    `${JSON.stringify({ date: new Date().toISOString(), results }, null, 2)}\n`,
  );
  console.log("| run | tokens | seconds planned / measured | peak memory planned / measured (MB) | phases (s) |");
  console.log("|---|---:|---|---|---|");
  for (const r of results)
    console.log(
      `| ${r.name} | ${r.tokens} | ${r.planned.seconds.toFixed(1)} / ${r.seconds.toFixed(1)} (${r.plan_ratio.seconds.toFixed(2)}) | ${r.planned.peak_memory_mb.toFixed(0)} / ${r.peak_rss_mb.toFixed(0)} (${r.plan_ratio.peak_memory.toFixed(2)}) | ${Object.entries(
        r.phases,
      )
        .map(([k, v]) => `${k} ${v.toFixed(1)}`)
        .join(", ")} |`,
    );
  fs.rmSync(work, { recursive: true, force: true });
}

if (import.meta.url === `file://${process.argv[1]}`) await main();

/**
 * `npm run bench:distributed`: a distributed run (`oneshot --nats`) on this machine, against the same
 * run local, and the distributed estimate (`plan --nats-workers N`) of it and of DeepSeek-V3 and
 * Qwen3-235B-A22B on N hosts.
 *
 * Measured: a model of an MoE layer (H 2048, 128 experts top-8, Im 512) and a dense layer, 16
 * samples x 512 tokens in shards of 4 samples; run local, then with 1 and with 2 workers (each its own process, one GPTQ
 * thread; nats-server on loopback, the test helper's), same bytes checked; each job's seconds from
 * the workers' events, the coordinator's from its own wall time. This machine has 2 vCPUs, one of
 * them shared: two workers contend with each other, so the 2-worker run shows correctness, not speed.
 *
 * Projected: header-only checkpoints of one MoE layer of each model (bench/layer-projection.ts),
 * planned for 512 samples x 2048 tokens at this machine's GEMM rate, for N = 8 to 128 workers with
 * groups of ceil(E / N) experts and shards of ceil(512 / N) samples (a job of each kind per worker). `-- projection` runs only this part. Writes
 * bench/results.json (`distributed`).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { MoecalError } from "../src/errors.js";
import { PACKAGE_ROOT } from "../src/paths.js";
import { plan } from "../src/pipeline/plan.js";
import { measureGemm } from "../src/pipeline/plan-model.js";
import { type DistributedPlan, distributedPlan } from "../src/pipeline/plan-distributed.js";
import { runFromSummary } from "../src/pipeline/report.js";
import { startNats } from "../test/distributed/nats-server.js";
import { DEEPSEEK_V3, headerOnly } from "./layer-projection.js";
import { cli, nanoSetup, proseDataset } from "./plan.js";

const log = (s: string): void => void process.stderr.write(`${new Date().toISOString()} bench:distributed: ${s}\n`);

/** Qwen3-235B-A22B's config.json fields that shape a layer (Qwen/Qwen3-235B-A22B, BF16), one layer. */
const QWEN3_235B: Record<string, unknown> = {
  architectures: ["Qwen3MoeForCausalLM"],
  model_type: "qwen3_moe",
  vocab_size: 151936,
  hidden_size: 4096,
  intermediate_size: 12288,
  moe_intermediate_size: 1536,
  num_hidden_layers: 1,
  num_attention_heads: 64,
  num_key_value_heads: 4,
  head_dim: 128,
  num_experts: 128,
  num_experts_per_tok: 8,
  decoder_sparse_step: 1,
  mlp_only_layers: [],
  norm_topk_prob: true,
  max_position_embeddings: 40960,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  tie_word_embeddings: false,
  hidden_act: "silu",
  torch_dtype: "bfloat16",
};

interface Measured {
  workers: number;
  seconds: number;
  /** each job's seconds, by kind: expert groups, token shards by phase, the other Linears' GPTQ */
  job_seconds: Record<string, number[]>;
  same_bytes: boolean;
  planned: DistributedPlan;
}

function oneshot(model: string, args: string[], out: string, extra: string[] = []): number {
  const r = spawnSync(cli, ["oneshot", "--model", model, ...args, "--output", out, "--overwrite", ...extra], {
    encoding: "utf8",
    maxBuffer: 64 * 1024 ** 2,
  });
  const t = runFromSummary(r.stdout);
  if (r.status !== 0 || !t) throw new MoecalError("E_BENCH", `oneshot failed: ${r.stderr.slice(-800)}`);
  return t.wallSeconds;
}

function sameFiles(a: string, b: string): boolean {
  const names = fs.readdirSync(a).sort();
  return (
    names.join() === fs.readdirSync(b).sort().join() &&
    names.every((f) => fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))))
  );
}

async function measured(work: string, data: string): Promise<{ local_seconds: number; runs: Measured[] }> {
  const model = path.join(work, "experts-128");
  const set = {
    mlp_only_layers: "[1]",
    hidden_size: 2048,
    num_experts: 128,
    moe_intermediate_size: 512,
    intermediate_size: 2048,
    num_attention_heads: 16,
    num_key_value_heads: 4,
    head_dim: 128,
  };
  const gen = spawnSync(process.execPath, [
    cli,
    "random-model",
    "--output",
    model,
    "--family",
    "qwen3_moe",
    "--layers",
    "2",
    ...Object.entries(set).flatMap(([k, v]) => ["--set", `${k}=${v}`]),
  ]);
  if (gen.status !== 0) throw new MoecalError("E_BENCH", `random-model failed: ${String(gen.stderr)}`);
  // shards of 4 samples: 4 token-shard jobs a phase
  const args = ["--dataset", data, "--num-samples", "16", "--max-seq-length", "512", "--workers", "1", "--shard-tokens", "2048"];
  log("local run (a minute or two)");
  const local = path.join(work, "local");
  const local_seconds = oneshot(model, args, local);
  const server = await startNats(path.join(work, "jetstream"));
  const p = await plan({ model, dataset: data, numSamples: 16, maxSeqLength: 512, workers: 1, shardTokens: 2048 });
  const runs: Measured[] = [];
  try {
    for (const n of [1, 2]) {
      log(`distributed run with ${n} worker(s)`);
      const workers: ChildProcess[] = [];
      const jobs: Record<string, number[]> = {};
      for (let k = 0; k < n; k++) {
        const w = spawn(cli, ["worker", "--nats", server.url, "--shared-dir", work, "--json", "--workers", "1"], {
          stdio: ["ignore", "pipe", "ignore"],
        });
        w.stdout?.on("data", (d: Buffer) => {
          for (const l of String(d).split("\n")) {
            if (!l.includes('"job-done"')) continue;
            const e = JSON.parse(l) as { job: string; seconds: number };
            const kind = e.job.startsWith("g") ? "group" : e.job.startsWith("q") ? "gptq" : (e.job.split("-")[0] as string);
            jobs[kind] = [...(jobs[kind] ?? []), e.seconds];
          }
        });
        workers.push(w);
      }
      const out = path.join(work, `distributed-${n}`);
      const seconds = oneshot(model, args, out, ["--nats", server.url]);
      for (const w of workers) w.kill("SIGTERM");
      runs.push({
        workers: n,
        seconds,
        job_seconds: jobs,
        same_bytes: sameFiles(out, local),
        planned: distributedPlan(p, { workers: n, threads: 1 }),
      });
      fs.rmSync(out, { recursive: true, force: true });
    }
  } finally {
    await server.stop();
  }
  return { local_seconds, runs };
}

interface Projection {
  model: string;
  moe_layers: number;
  tokens: number;
  /** the GEMM rate the plan measured on this machine (GFLOP/s): its seconds are at this rate */
  gemm_gflops: number;
  /** per MoE layer, by worker count (groups of ceil(E / N) experts: a job per worker): the estimate's seconds and bytes moved */
  per_layer: {
    workers: number;
    group_size: number;
    jobs: number;
    /** token shards a phase (--shard-tokens: a shard per worker), one shard's three phases, the other Linears' GPTQ jobs' wall */
    shards: number;
    shard_seconds: number;
    gptq_seconds: number;
    seconds: number;
    job_seconds: number;
    coordinator_seconds: number;
    moved_gib: number;
  }[];
  /** one machine, per MoE layer */
  local_seconds: number;
}

async function projected(work: string): Promise<Projection[]> {
  // 512 samples of at least 2048 tokens each
  const data = proseDataset(path.join(work, "long-2048.jsonl"), 512, 14_000);
  // one GEMM rate for every plan, so that the worker counts compare (each plan would measure its own)
  const known = { gemmGflops: await measureGemm() };
  const out: Projection[] = [];
  for (const [name, config, layers] of [
    ["DeepSeek-V3", DEEPSEEK_V3, 58],
    ["Qwen3-235B-A22B", QWEN3_235B, 94],
  ] as const) {
    log(`projection: ${name}`);
    const dir = path.join(work, name);
    // two MoE layers: the first is one with propagation (any but the last)
    headerOnly(dir, { ...config, num_hidden_layers: 2 });
    const opts = { model: dir, dataset: data, numSamples: 512, maxSeqLength: 2048, workers: 16, maxMemory: 2 ** 50 };
    const local = await plan(opts, known);
    const E = local.layers[0]?.experts?.count ?? 1;
    const per_layer: Projection["per_layer"] = [];
    for (const workers of [8, 32, 64, 128]) {
      const size = Math.max(1, Math.ceil(E / workers));
      // a shard of whole samples per worker
      const shardTokens = 2048 * Math.ceil(512 / workers);
      const d = distributedPlan(await plan({ ...opts, expertGroupSize: size, shardTokens }, known), { workers, threads: 16 }).layers[0];
      if (!d) throw new MoecalError("E_BENCH", `${name}: no MoE layer planned`);
      per_layer.push({
        workers,
        group_size: size,
        jobs: d.groups,
        shards: d.shards,
        shard_seconds: d.shard_seconds,
        gptq_seconds: d.gptq_seconds,
        seconds: d.seconds,
        job_seconds: d.job_seconds,
        coordinator_seconds: d.coordinator_seconds,
        moved_gib: d.moved_bytes / 1024 ** 3,
      });
    }
    out.push({
      model: name,
      moe_layers: layers,
      tokens: local.tokens,
      gemm_gflops: local.gemm_gflops,
      per_layer,
      local_seconds: local.layers[0]?.seconds ?? 0,
    });
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-distributed-"));
try {
  const { data } = nanoSetup(work, { model: false });
  const file = path.join(PACKAGE_ROOT, "bench", "results.json");
  const base = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>) : {};
  // `-- projection`: the projections only, the last measured runs kept
  const only = process.argv.includes("projection");
  const runs = only ? ((base.distributed ?? {}) as Record<string, unknown>) : await measured(work, data);
  const result = { ...runs, date: new Date().toISOString(), projections: await projected(work) };
  fs.writeFileSync(file, `${JSON.stringify({ ...base, distributed: result }, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}

/** The distributed estimate (`plan --nats-workers N`): its jobs, waves, bytes, and its argument checks. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { UsageError } from "../../src/errors.js";
import { plan } from "../../src/pipeline/plan.js";
import { distributedPlan } from "../../src/pipeline/plan-distributed.js";
import { jobGroupSize } from "../../src/pipeline/expert-groups.js";
import { runWorker } from "../../src/distributed/worker.js";
import { ROOT, TEXT } from "../helpers.js";

const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
const base = { model, dataset: path.join(TEXT, "eval-json.jsonl"), numSamples: 4, maxSeqLength: 32 };

test("a layer's default groups: a job for each idle worker, at least 8 jobs, at least one expert a job", () => {
  assert.deepEqual(
    [
      [256, 0],
      [256, 8],
      [256, 32],
      [256, 100],
      [256, 300],
      [8, 3],
    ].map(([E, idle]) => jobGroupSize(E as number, idle as number)),
    [32, 32, 8, 3, 1, 1],
  );
});

test("each MoE layer's experts become its jobs: 8 groups by default, the plan's groups when given; its token shards (--shard-tokens) and other Linears' GPTQ jobs too; N workers run them in waves of N", async () => {
  const p = await plan(base);
  const one = distributedPlan(p, { workers: 1, threads: 1 });
  const many = distributedPlan(p, { workers: 8, threads: 1 });
  // qwen3_moe's 3 layers are MoE, 8 experts each: 8 jobs of one expert
  assert.deepEqual(
    one.layers.map((l) => [l.layer, l.groups]),
    [
      [0, 8],
      [1, 8],
      [2, 8],
    ],
  );
  const close = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-9 * Math.max(a, b);
  for (const [k, l] of one.layers.entries()) {
    const m = many.layers[k] as (typeof many.layers)[number];
    assert.equal(l.shards, 1, "4 samples of 32 tokens: one shard of 65536");
    assert.ok(close(l.jobs_seconds, l.shard_seconds + l.gptq_seconds + 8 * l.job_seconds), "one worker runs 8 group waves");
    assert.ok(close(m.jobs_seconds, m.shard_seconds + m.gptq_seconds + m.job_seconds), "8 workers run one wave");
    assert.ok(m.gptq_seconds <= l.gptq_seconds && m.gptq_seconds > 0, "the other Linears' GPTQ jobs in parallel");
    assert.equal(m.coordinator_seconds, l.coordinator_seconds);
  }
  // shards of 32 tokens: a shard per sample, 4 a phase; 2 workers run them in 2 waves
  const sharded = distributedPlan(await plan({ ...base, shardTokens: 32 }), { workers: 2, threads: 1 });
  for (const l of sharded.layers) {
    assert.equal(l.shards, 4);
    assert.ok(close(l.jobs_seconds, 2 * l.shard_seconds + l.gptq_seconds + 4 * l.job_seconds));
  }
  assert.ok(many.seconds < one.seconds);
  const grouped = distributedPlan(await plan({ ...base, expertGroupSize: 3 }), { workers: 2, threads: 1 });
  assert.deepEqual(
    grouped.layers.map((l) => l.groups),
    [3, 3, 3],
  );
  assert.ok(
    grouped.layers.every((l) => close(l.jobs_seconds, l.shard_seconds + l.gptq_seconds + 2 * l.job_seconds)),
    "3 jobs on 2 workers: two waves",
  );
});

test("a dense layer (DeepSeek-V3's first) is its token shards and GPTQ jobs: no groups, no routed streams", async () => {
  const p = await plan({ ...base, model: path.join(ROOT, "test", "fixtures", "tiny-deepseek_v3-fp8") });
  const d = distributedPlan(p, { workers: 2, threads: 1 });
  const dense = d.layers[0];
  assert.ok(dense && p.layers[0]?.experts === null, "layer 0 is dense");
  assert.equal(dense.groups, 0);
  assert.ok(dense.gptq_seconds > 0 && dense.shard_seconds > 0);
  assert.ok(Math.abs(dense.jobs_seconds - (dense.shard_seconds + dense.gptq_seconds)) <= 1e-9 * dense.jobs_seconds);
  // its inputs read by the calibrate and output shards, its outputs written; its statistics once, its Hessians once
  const ne = p.layers[0]?.non_expert;
  assert.ok(ne);
  assert.equal(dense.moved_bytes, 3 * ne.input_bytes + 4 * ne.hessian_bytes);
  assert.deepEqual(
    d.layers.map((l) => l.groups > 0),
    [false, true, true],
  );
});

test("bytes moved per layer: both streams of calls once per group job, the experts' weights read once, their tensors written and read back once, their routed rows written and read once (none of the last two streams in the last layer); each shard's inputs, calls, statistics and outputs", async () => {
  const p = await plan(base);
  const d = distributedPlan(p, { workers: 2 });
  const [H, K] = [64, 2];
  for (const l of d.layers) {
    const x = p.layers[l.layer]?.experts;
    assert.ok(x);
    assert.equal(x.stream_bytes, 4 * p.tokens * (H + 2 * K));
    assert.equal(x.routed_rows_bytes, 4 * p.tokens * K * H);
    const last = l.layer === 2;
    const groups = last
      ? l.groups * x.stream_bytes + x.read_bytes + 2 * x.write_bytes
      : l.groups * 2 * x.stream_bytes + x.read_bytes + 2 * x.write_bytes + 2 * x.routed_rows_bytes;
    // the layer's inputs (4 T H: as large as its sums): read by calibrate, propagate and output shards, the
    // routed sums read and the outputs written by the output shards; calls written by calibrate and propagate;
    // the other Linears' statistics written and read per shard, their Hessians written and read once (GPTQ jobs)
    const hidden = 4 * p.tokens * H;
    const hess = p.layers[l.layer]?.non_expert.hessian_bytes ?? 0;
    const shards = last ? hidden + x.stream_bytes + 4 * hess : 5 * hidden + 2 * x.stream_bytes + 4 * hess;
    assert.equal(l.moved_bytes, groups + shards);
    assert.ok(hess > 0, "attention's Hessians");
    assert.ok(x.read_bytes > 0 && x.write_bytes > 0 && x.write_bytes < x.read_bytes, "W4A16 writes less than BF16 reads");
  }
  assert.equal(
    d.moved_bytes,
    d.layers.reduce((a, l) => a + l.moved_bytes, 0),
  );
});

test("bad arguments are usage errors naming them: workers < 1, a data-free plan, runWorker's unknown or missing options", async () => {
  const p = await plan(base);
  assert.throws(
    () => distributedPlan(p, { workers: 0 }),
    (e: unknown) => e instanceof UsageError && /workers must be an integer >= 1/.test(e.message),
  );
  const dataFree = await plan({ ...base, method: "rtn" });
  assert.throws(() => distributedPlan(dataFree, { workers: 2 }), /data-free run is not distributed/);
  await assert.rejects(
    runWorker({ nats: { url: "nats://127.0.0.1:1" }, sharedDir: "/tmp", worker: 2 } as never),
    (e: unknown) => e instanceof UsageError && /runWorker: unknown option "worker"/.test(e.message),
  );
  await assert.rejects(runWorker({ nats: { url: "nats://127.0.0.1:1" } } as never), /runWorker: .*sharedDir/);
  // the shared folder is checked before connecting
  await assert.rejects(
    runWorker({ nats: { url: "nats://127.0.0.1:1" }, sharedDir: path.join(ROOT, "no-such-folder") }),
    /--shared-dir .*no-such-folder: no such folder/,
  );
  await assert.rejects(
    runWorker({ nats: { url: "nats://127.0.0.1:1" }, sharedDir: ROOT }),
    (e: unknown) => e instanceof UsageError && /--nats nats:\/\/127\.0\.0\.1:1: cannot connect/.test(e.message),
  );
});

test("plan --nats-workers N prints the estimate, and adds it to --json", () => {
  const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
  const args = ["plan", "--model", model, "--dataset", base.dataset, "--num-samples", "4", "--max-seq-length", "32", "--nats-workers", "4"];
  const text = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8" });
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /distributed \(oneshot --nats\) with 4 worker\(s\)/);
  assert.match(text.stdout, /through the shared folder/);
  const json = spawnSync(process.execPath, [cli, ...args, "--json"], { encoding: "utf8" });
  const d = (JSON.parse(json.stdout) as { distributed: { workers: number; layers: unknown[] } }).distributed;
  assert.equal(d.workers, 4);
  assert.equal(d.layers.length, 3);
});

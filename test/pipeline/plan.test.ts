/**
 * The plan against a real run on the bundled model: exact byte counts (weights read, tensors
 * written), the work per phase, the peak memory near the run's, and oneshot's refusals; its GPTQ
 * work against the products a GPTQ call runs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { plan } from "../../src/pipeline/plan.js";
import { checkPlan, parseBytes } from "../../src/pipeline/plan-report.js";
import { runFromSummary } from "../../src/pipeline/report.js";
import { ROOT, TEXT, TINY, tempDir } from "../helpers.js";
import { randomModel } from "../../src/pipeline/random-model.js";
import { gptqFlops } from "../../src/pipeline/plan-model.js";
import { getEngine } from "../../src/engine/index.js";
import { gptqWithPrep, prepareGptq } from "../../src/quantization/gptq.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { randn } from "../rand.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = tempDir("moecal-plan-");
const args = ["--dataset", path.join(TEXT, "eval-prose.jsonl"), "--num-samples", "16", "--max-seq-length", "128"];

test("plan vs a run on the bundled model: bytes read and written exactly, work per phase, peak memory within 25% of the run's", async () => {
  const p = await plan({ dataset: path.join(TEXT, "eval-prose.jsonl"), numSamples: 16, maxSeqLength: 128 }, { gemmGflops: 50 });
  const out = path.join(tmp, "run");
  const r = spawnSync(process.execPath, [cli, "oneshot", ...args, "--output", out, "--quiet"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const index = JSON.parse(fs.readFileSync(path.join(out, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number } };
  assert.equal(p.disk.output, index.metadata.total_size, "planned output bytes = the written tensors' bytes");
  const ck = Checkpoint.open(TINY);
  for (const l of p.layers) {
    const read = ck
      .names()
      .filter((n) => n.startsWith(`model.layers.${l.layer}.`))
      .reduce((a, n) => a + ck.info(n).end - ck.info(n).begin, 0);
    assert.equal(l.read_bytes, read, `layer ${l.layer} reads its weights once`);
    assert.ok(l.flops.calibrate > 0 && l.flops.gptq > 0);
    assert.equal(l.moe, l.layer > 0);
  }
  assert.equal(p.layers.at(-1)?.flops.propagate, 0, "the last layer's outputs are not propagated");
  // the samples are read back in chunks from the work folder: here all in one
  assert.ok(p.layers.every((l) => l.memory.hidden_states === 4 * 128 * (p.tokens + 128)));
  assert.equal(p.disk.resume_state, 2 * 4 * p.tokens * 128 + p.layers.reduce((a, l) => a + l.write_bytes, 0));
  const measured = runFromSummary(r.stdout)?.peakRssMb ?? 0;
  const planned = p.peak_memory_bytes / 1024 ** 2;
  assert.ok(Math.abs(planned - measured) <= 0.25 * measured, `planned ${planned.toFixed(0)} MiB, measured ${measured} MB`);
});

test("moecal plan --json: an object with peak_memory_bytes, disk_bytes, seconds and the per-layer detail", () => {
  const r = spawnSync(process.execPath, [cli, "plan", ...args, "--json"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  for (const k of ["peak_memory_bytes", "disk_bytes", "seconds"]) assert.ok(typeof j[k] === "number" && (j[k] as number) > 0, k);
  assert.equal((j.layers as unknown[]).length, 4);
  const text = spawnSync(process.execPath, [cli, "plan", ...args], { encoding: "utf8" });
  assert.match(
    text.stdout,
    /plan: peak memory [\d.]+ MiB, disk [\d.]+ MiB \(output [\d.]+ MiB, resume state [\d.]+ MiB, shard assembly [\d.]+ MiB\), about [\d.]+ (s|min)/,
  );
});

test("oneshot prints the plan's summary first and refuses a plan over --max-memory, naming the largest part and what shrinks it", async () => {
  const out = path.join(tmp, "small");
  const r = spawnSync(process.execPath, [cli, "oneshot", ...args, "--output", out, "--max-memory", "64M"], { encoding: "utf8" });
  assert.equal(r.status, 2, r.stderr);
  assert.match(
    r.stderr,
    /the plan needs [\d.]+ MiB of memory at layer \d, more than --max-memory 64.0 MiB; most of it is the process itself/,
  );
  assert.equal(fs.existsSync(out), false);
  // a part larger than the process's own memory is named, with the option that shrinks it
  const p = await plan({ dataset: path.join(TEXT, "eval-prose.jsonl"), numSamples: 4, maxSeqLength: 32 }, { gemmGflops: 50 });
  const layer = p.layers[1] as (typeof p.layers)[number];
  layer.memory.hidden_states = 3 * 1024 ** 3;
  layer.peak_memory_bytes = 4 * 1024 ** 3;
  p.peak_memory_bytes = layer.peak_memory_bytes;
  assert.throws(
    () => checkPlan(p, { maxMemory: 2 * 1024 ** 3, freeDisk: 1e12, output: out }),
    /4\.00 GiB of memory at layer 1, more than --max-memory 2\.00 GiB; the largest part is hidden states \(3\.00 GiB\): fewer --num-samples or a shorter --max-seq-length shrinks it/,
  );
  // a step outside the layers is named too: the embedding of long samples
  p.phases.embed = 5 * 1024 ** 3;
  p.peak_memory_bytes = p.phases.embed + 180 * 1024 ** 2;
  assert.throws(
    () => checkPlan(p, { maxMemory: 2 * 1024 ** 3, freeDisk: 1e12, output: out }),
    /of memory to embed the calibration samples, more than --max-memory 2\.00 GiB; the largest part is one sample's embeddings \(5\.00 GiB\): a shorter --max-seq-length shrinks it/,
  );
  const ok = spawnSync(process.execPath, [cli, "oneshot", ...args, "--output", path.join(tmp, "ok"), "--method", "rtn", "--calibrate"], {
    encoding: "utf8",
  });
  assert.match(ok.stderr.split("\n")[1] ?? "", /plan: peak memory/);
});

test("sizes parse with binary units", () => {
  assert.deepEqual(["1024", "64M", "1.5G", "2KiB", "3 GB"].map(parseBytes), [1024, 64 * 1024 ** 2, 1.5 * 1024 ** 3, 2048, 3 * 1024 ** 3]);
  assert.throws(() => parseBytes("lots"), /not a size/);
});

test("the data-free plan: no data read, the bytes a run writes exactly, memory flat in the model's depth (a job per worker and one ahead), and the CLI says so", async () => {
  const p = await plan({ method: "rtn", scheme: "W4A16", workers: 2, dataset: path.join(tmp, "not-read.jsonl") });
  assert.equal(p.data_free?.workers, 2);
  assert.equal(p.samples, 0);
  const out = path.join(tmp, "data-free");
  const r = spawnSync(process.execPath, [cli, "oneshot", "--method", "rtn", "--workers", "2", "--output", out], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const index = JSON.parse(fs.readFileSync(path.join(out, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number } };
  assert.equal(p.disk.output, index.metadata.total_size, "planned output bytes = the written tensors' bytes");
  assert.equal(p.disk.resume_state, 0, "finished shards are the output's own");
  assert.match(r.stderr, /plan \(data-free, 2 worker thread\(s\)\): peak memory [\d.]+ MiB \(a job's weights per worker and one ahead/);
  const job = p.data_free?.job_bytes ?? 0;
  assert.ok(p.layers.every((l) => l.memory.parameters <= 3 * job && l.flops.calibrate === 0));
  // the same shapes four times deeper: the same peak
  const deep = randomModel({ output: path.join(tmp, "deep"), layers: 16 }).output;
  const pd = await plan({ model: deep, method: "rtn", scheme: "W4A16", workers: 2 });
  assert.equal(pd.peak_memory_bytes - pd.baseline_bytes, p.peak_memory_bytes - p.baseline_bytes, "beside the process itself");
  assert.ok(pd.seconds > 3 * p.seconds);
  const text = spawnSync(process.execPath, [cli, "plan", "--method", "rtn", "--scheme", "NVFP4A16", "--workers", "0"], {
    encoding: "utf8",
  });
  assert.match(text.stdout, /data-free \(no calibration data/);
  assert.match(text.stdout, /plan \(data-free, 0 worker thread\(s\)\)/);
  const calibrated = spawnSync(process.execPath, [cli, "plan", "--method", "rtn", "--calibrate", ...args], { encoding: "utf8" });
  assert.match(calibrated.stdout, /^plan: peak memory/m);
});

test("the plan's GPTQ work for a Linear is the arithmetic a GPTQ call does: its products and the column spreads in its sub-blocks, out x in x (in - 1)", async () => {
  const [out, inF] = [64, 384];
  const H = randn([inF, inF], 71, 0.01).data;
  for (let i = 0; i < inF; i++) for (let j = 0; j < i; j++) H[i * inF + j] = H[j * inF + i] as number;
  for (let i = 0; i < inF; i++) H[i * inF + i] = inF;
  const args = resolveScheme("W4A16", { groupSize: 128 }).weights;
  const prep = await prepareGptq(H, inF, args.actorder, "count", 0.01, 128);
  const engine = getEngine();
  const subtract = engine.subtractProduct;
  let products = 0;
  engine.subtractProduct = (c, a, b) => {
    products += 2 * (a.shape[0] as number) * (a.shape[1] as number) * (b.shape[1] as number);
    return subtract.call(engine, c, a, b);
  };
  try {
    await gptqWithPrep(randn([out, inF], 72, 0.02).data, out, prep, args, "BF16", "count");
  } finally {
    engine.subtractProduct = subtract;
  }
  // each column's error spread over the later columns of its 8-column sub-block: 28 pairs, 2 out each
  const spreads = (inF / 8) * 28 * 2 * out;
  assert.equal(products + spreads, out * inF * (inF - 1));
  assert.equal(gptqFlops(out, inF), out * inF * inF);
});

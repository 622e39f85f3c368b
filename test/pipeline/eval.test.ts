import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { evaluate, klStats, referenceLogits } from "../../src/pipeline/eval.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { rawToF32 } from "../../src/io/safetensors.js";
import { ROOT, TEXT, TINY, golden, goldenDataset, openAfmoe, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-eval-");
const fwd = golden("forward.safetensors");
const { file: dataset, ids, seq: S } = goldenDataset(tmp);
const V = 260;

/** Float64 log-softmax of row r of a flat [rows, V] array. */
function logSoftmax(x: ArrayLike<number>, r: number): number[] {
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, x[r * V + v] as number);
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp((x[r * V + v] as number) - max);
  return Array.from({ length: V }, (_, v) => (x[r * V + v] as number) - max - Math.log(sum));
}

test("eval NLL equals the one computed from the reference implementation's golden logits", async () => {
  const tok = loadTokenizer(TINY);
  const texts = fs
    .readFileSync(dataset, "utf8")
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { text: string }).text);
  for (const [b, t] of texts.entries())
    assert.deepEqual(tok.encode(t), ids.slice(b * S, (b + 1) * S), `sample ${b} round-trips through the tokenizer`);
  const logits = rawToF32(fwd.readRaw("logits"), "logits").data;
  let nll = 0;
  for (let b = 0; b < 2; b++) for (let t = 0; t < S - 1; t++) nll -= logSoftmax(logits, b * S + t)[ids[b * S + t + 1] as number] as number;
  nll /= 2 * (S - 1);
  const r = await evaluate({ model: TINY, dataset, maxSeqLength: S });
  assert.equal(r.tokens, 2 * (S - 1));
  assert.equal(r.kl, null);
  assert.ok(Math.abs(r.nll - nll) <= 1e-5 * nll, `nll ${r.nll} vs golden ${nll}`);
  assert.ok(Math.abs(r.ppl - Math.exp(r.nll)) <= 1e-12 * r.ppl);
});

test("eval KL: zero for a model against itself; for a quantized model equal to KL computed from whole-model forwards", async () => {
  const self = await evaluate({ model: TINY, reference: TINY, dataset, maxSeqLength: S });
  assert.equal(self.kl, 0);
  const q = path.join(tmp, "rtn");
  await oneshot({ method: "rtn", scheme: "W4A16", groupSize: 32, numSamples: 1, maxSeqLength: 8, output: q, warn: () => undefined });
  const r = await evaluate({ model: q, reference: TINY, dataset, maxSeqLength: S });
  // independent: each model whole in memory, one forward per batch, KL summed in float64 here
  const input = { ids: { ids: Int32Array.from(ids), shape: [2, S] } };
  const lp = (await openAfmoe(q).model.call(input)).logits.data;
  const lq = (await openAfmoe(TINY).model.call(input)).logits.data;
  let kl = 0;
  for (let b = 0; b < 2; b++) {
    for (let t = 0; t < S - 1; t++) {
      const p = logSoftmax(lp, b * S + t);
      const qq = logSoftmax(lq, b * S + t);
      for (let v = 0; v < V; v++) kl += Math.exp(qq[v] as number) * ((qq[v] as number) - (p[v] as number));
    }
  }
  kl /= 2 * (S - 1);
  assert.ok(kl > 0);
  // batch 2 vs one sample at a time changes float32 summation order in the products (logits agree to ~1e-6)
  assert.ok(Math.abs((r.kl as number) - kl) <= 1e-5 * kl, `streamed KL ${r.kl} vs whole-model ${kl}`);
});

test("eval against precomputed reference logits gives exactly the result against the reference folder; other samples are refused", async () => {
  const q = path.join(tmp, "rtn");
  if (!fs.existsSync(q))
    await oneshot({ method: "rtn", scheme: "W4A16", groupSize: 32, numSamples: 1, maxSeqLength: 8, output: q, warn: () => undefined });
  const opts = { dataset: path.join(TEXT, "eval-json.jsonl"), numSamples: 5, maxSeqLength: 40, chunkTokens: 90 };
  const cached = await referenceLogits(TINY, opts);
  assert.equal(cached.logits.length, 5);
  const viaFolder = await evaluate({ ...opts, model: q, reference: TINY });
  assert.ok((viaFolder.kl as number) > 0);
  assert.deepEqual(await evaluate({ ...opts, model: q, reference: cached }), viaFolder);
  await assert.rejects(evaluate({ ...opts, maxSeqLength: 30, model: q, reference: cached }), /other samples/);
});

test("eval in chunks of a few samples gives exactly the result of one pass", async () => {
  const opts = { model: TINY, reference: TINY, dataset: path.join(TEXT, "eval-arith.jsonl"), numSamples: 6, maxSeqLength: 40 };
  assert.deepEqual(await evaluate({ ...opts, chunkTokens: 50 }), await evaluate(opts));
});

test("moecal eval --json prints nll, ppl, kl and tokens", () => {
  const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
  const r = spawnSync(
    process.execPath,
    [
      cli,
      "eval",
      "--model",
      TINY,
      "--reference",
      TINY,
      "--dataset",
      path.join(TEXT, "eval-json.jsonl"),
      "--num-samples",
      "2",
      "--max-seq-length",
      "16",
      "--json",
    ],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as Record<string, number>;
  assert.deepEqual(Object.keys(j).sort(), ["kl", "nll", "ppl", "tokens"]);
  assert.equal(j.tokens, 2 * 15);
  assert.equal(j.kl, 0);
});

test("klStats: median, 99th percentile, max, and what the top 1% of tokens carry", () => {
  // 200 tokens: 198 at 1e-6, two outliers; the top 1% is the two outliers
  const v = new Float64Array(200).fill(1e-6);
  v[17] = 0.5;
  v[123] = 0.1;
  const s = klStats(v);
  assert.equal(s.median, 1e-6);
  assert.equal(s.max, 0.5);
  assert.equal(s.p99, 0.1);
  assert.ok(Math.abs(s.meanWithoutTop1Percent - 1e-6) < 1e-18);
  assert.ok(Math.abs(s.top1PercentShare - 0.6 / (0.6 + 198e-6)) < 1e-12);
  const odd = klStats(Float64Array.from([3, 1, 2]));
  assert.equal(odd.median, 2);
});

test("eval --json --kl-stats adds the distribution; the library result carries it whenever there is a reference", async () => {
  const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
  const r = spawnSync(
    process.execPath,
    [
      cli,
      "eval",
      "--model",
      TINY,
      "--reference",
      TINY,
      "--dataset",
      path.join(TEXT, "eval-json.jsonl"),
      "--num-samples",
      "2",
      "--max-seq-length",
      "16",
      "--json",
      "--kl-stats",
    ],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { kl_stats: Record<string, number> };
  assert.deepEqual(Object.keys(j.kl_stats).sort(), ["max", "mean_without_top_1_percent", "median", "p99", "top_1_percent_share"]);
  assert.equal(j.kl_stats.max, 0);
  const lib = await evaluate({ model: TINY, dataset: path.join(TEXT, "eval-json.jsonl"), numSamples: 1, maxSeqLength: 16 });
  assert.equal(lib.klStats, null);
});

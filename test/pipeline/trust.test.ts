/**
 * What moecal promises about the user's files and its inputs, beyond the bad-input table: copies
 * never widen permissions or follow links out of the model folder, moecal.json reveals no local
 * path, a sample is cut before it is tokenized whole, seeds are NumPy's, a shard that vanishes
 * mid-run is named, and large module trees build.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { encodeTruncated, loadTokenizedSamples, readRawSamples } from "../../src/pipeline/dataset.js";
import { type LoadedTokenizer, loadTokenizer } from "../../src/io/tokenizer.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { CheckpointFormatError } from "../../src/errors.js";
import { isInside } from "../../src/io/files.js";
import { numpyPermutation } from "../../src/util/numpy-random.js";
import { AfmoeForCausalLM, mapAfmoeWeights, parseAfmoeConfig } from "../../src/models/afmoe/index.js";
import { ROOT, TINY, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-trust-");
const quiet = { method: "rtn" as const, numSamples: 1, maxSeqLength: 8, warn: (): void => undefined };

function modelCopy(name: string): string {
  const m = path.join(tmp, name);
  fs.mkdirSync(m);
  for (const f of fs.readdirSync(TINY)) fs.copyFileSync(path.join(TINY, f), path.join(m, f));
  return m;
}

test("companion files: never wider permissions than the source; a symlink inside the folder is copied as a regular file", async () => {
  const m = modelCopy("perm-model");
  fs.chmodSync(path.join(m, "tokenizer_config.json"), 0o600);
  fs.chmodSync(path.join(m, "generation_config.json"), 0o755);
  fs.renameSync(path.join(m, "tokenizer.json"), path.join(m, "real-tokenizer.json"));
  fs.symlinkSync("real-tokenizer.json", path.join(m, "tokenizer.json"));
  const out = path.join(tmp, "perm-out");
  await oneshot({ ...quiet, model: m, output: out });
  assert.equal(fs.statSync(path.join(out, "tokenizer_config.json")).mode & 0o777, 0o600);
  assert.equal(fs.statSync(path.join(out, "generation_config.json")).mode & 0o777, 0o644, "never executable");
  assert.ok(fs.lstatSync(path.join(out, "tokenizer.json")).isFile(), "copied as a regular file, not a link");
  assert.deepEqual(fs.readFileSync(path.join(out, "tokenizer.json")), fs.readFileSync(path.join(m, "real-tokenizer.json")));
});

test("a Hugging Face hub cache snapshot (files linked into the repository's blobs/) is read", async () => {
  const repo = path.join(tmp, "hub", "models--org--tiny");
  const snap = path.join(repo, "snapshots", "abc123");
  fs.mkdirSync(path.join(repo, "blobs"), { recursive: true });
  fs.mkdirSync(snap, { recursive: true });
  for (const f of fs.readdirSync(TINY)) {
    const blob = createHash("sha256").update(f).digest("hex");
    fs.copyFileSync(path.join(TINY, f), path.join(repo, "blobs", blob));
    fs.symlinkSync(path.join("..", "..", "blobs", blob), path.join(snap, f));
  }
  const { report } = await oneshot({ ...quiet, model: snap, output: path.join(tmp, "hub-out") });
  assert.equal(report.model.name, "abc123");
});

test("moecal.json names the model and dataset by name and content hash, never by a local path", async () => {
  const m = modelCopy("private-model");
  const data = path.join(tmp, "private-data.jsonl");
  fs.writeFileSync(data, '{"text": "a private sentence"}\n');
  const out = path.join(tmp, "private-out");
  await oneshot({ ...quiet, calibrate: true, model: m, dataset: data, output: out });
  const text = fs.readFileSync(path.join(out, "moecal.json"), "utf8");
  assert.ok(!text.includes(tmp), "no absolute path of the user's folders");
  assert.ok(!text.includes(os.homedir()) || os.homedir() === "/", "no home folder");
  const j = JSON.parse(text) as { model: { name: string; sha256: string }; dataset: { name: string; sha256: string } };
  assert.equal(j.model.name, "private-model");
  assert.equal(j.dataset.name, "private-data.jsonl");
  assert.equal(j.dataset.sha256, createHash("sha256").update(fs.readFileSync(data)).digest("hex"));
  // the model hash: SHA-256 over "<file>\t<sha256>\n" for config.json, the index and the shards, in name order
  const files = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"];
  const lines = files
    .map(
      (f) =>
        `${f}\t${createHash("sha256")
          .update(fs.readFileSync(path.join(m, f)))
          .digest("hex")}\n`,
    )
    .join("");
  assert.equal(j.model.sha256, createHash("sha256").update(lines).digest("hex"));
});

/** A word-level stand-in tokenizer: one token per whitespace-separated word, so a cut inside a word changes the last token. */
function wordTokenizer(counter: { chars: number }): LoadedTokenizer {
  const ids = new Map<string, number>();
  const encode = (text: string): number[] => {
    counter.chars += text.length;
    return [
      0,
      ...text
        .split(/\s+/)
        .filter((w) => w)
        .map((w) => {
          if (!ids.has(w)) ids.set(w, ids.size + 1);
          return ids.get(w) as number;
        }),
    ];
  };
  return { encode, decode: () => "", bosTokenId: 0, chatTemplate: null, bosToken: null, eosToken: null, config: {} };
}

test("a sample is cut before it is tokenized whole: same tokens as tokenizing it all, a fraction of the work", () => {
  const counter = { chars: 0 };
  const tok = wordTokenizer(counter);
  const words = Array.from({ length: 5000 }, (_, i) => "w".repeat(1 + ((i * 7919) % 23)) + String(i % 97));
  for (const n of [2, 7, 64, 300]) {
    for (const len of [10, 900, 5000]) {
      const text = words.slice(0, len).join(len % 2 ? " " : "  \n");
      assert.deepEqual(encodeTruncated(tok, text, n), tok.encode(text).slice(0, n), `n ${n}, ${len} words`);
    }
  }
  // the bundled tokenizer on every bundled sample, with cuts that land inside multi-byte characters
  const bundled = loadTokenizer(TINY);
  for (const s of readRawSamples(path.join(ROOT, "data", "calib-prose.jsonl")).slice(0, 40)) {
    const text = "text" in s ? `${s.text} é😀 ${s.text}` : "";
    for (const n of [2, 33, 200]) assert.deepEqual(encodeTruncated(bundled, text, n), bundled.encode(text).slice(0, n));
  }
  // a single 50 MB line costs about what its first max-seq-length tokens cost
  const line = path.join(tmp, "huge.jsonl");
  fs.writeFileSync(line, `${JSON.stringify({ text: "word ".repeat(10 * 1024 * 1024) })}\n`);
  counter.chars = 0;
  const [ids] = loadTokenizedSamples(line, tok, { maxSeqLength: 2048 });
  assert.equal(ids?.length, 2048);
  assert.ok(counter.chars < 1024 * 1024, `${counter.chars} characters tokenized for 2048 tokens of a 50 MB line`);
});

test("a UTF-8 byte order mark at the start of a JSON lines file is accepted", () => {
  const f = path.join(tmp, "bom.jsonl");
  fs.writeFileSync(f, '\ufeff{"text": "abc"}\n');
  assert.deepEqual(readRawSamples(f), [{ text: "abc" }]);
});

test("--seed takes what NumPy's default_rng takes: integers beyond 2^64 draw NumPy's permutation", () => {
  // np.random.default_rng(2**70 + 12345).permutation(10) and default_rng(2**64).permutation(10), NumPy 2.4.6
  assert.deepEqual(numpyPermutation(10, 2n ** 70n + 12345n), [1, 9, 8, 3, 2, 6, 7, 5, 0, 4]);
  assert.deepEqual(numpyPermutation(10, 2n ** 64n), [5, 1, 6, 3, 4, 8, 9, 7, 2, 0]);
  assert.deepEqual(numpyPermutation(10, 42n), numpyPermutation(10, 42));
});

test("a shard that vanishes after the folder was opened is named in a CheckpointFormatError", () => {
  const m = modelCopy("vanish-model");
  const ck = Checkpoint.open(m);
  fs.rmSync(path.join(m, "model-00002-of-00002.safetensors"));
  const name = ck.names().find((n) => ck.fileOf(n) === "model-00002-of-00002.safetensors") as string;
  assert.throws(
    () => ck.readRaw(name),
    (e: unknown) => e instanceof CheckpointFormatError && /model-00002-of-00002.safetensors: not found/.test(e.message),
  );
});

test("large module trees build and map: 512 experts x 64 layers", () => {
  const raw = JSON.parse(fs.readFileSync(path.join(TINY, "config.json"), "utf8")) as Record<string, unknown>;
  Object.assign(raw, { num_experts: 512, num_hidden_layers: 64, layer_types: undefined, global_attn_every_n_layers: 4 });
  const config = parseAfmoeConfig(raw);
  const model = new AfmoeForCausalLM(config);
  const params = model.namedParameters();
  assert.equal(params.filter(([n]) => n.includes(".experts.")).length, (64 - config.numDenseLayers) * 512 * 3);
  const m = mapAfmoeWeights(
    config,
    params.map(([n, p]) => [n, p.shape] as const),
    new Map(params.map(([n, p]) => [n, p.shape])),
  );
  assert.equal(m.missing.length + m.unexpected.length + m.wrongShape.length, 0);
});

test("isInside: a folder and what lies below it, not its siblings or a name that merely starts with two dots", () => {
  assert.equal(isInside("/a/b", "/a/b"), true);
  assert.equal(isInside("/a/b/c", "/a/b"), true);
  assert.equal(isInside("/a/b/..c", "/a/b"), true);
  assert.equal(isInside("/a/bc", "/a/b"), false);
  assert.equal(isInside("/a", "/a/b"), false);
  assert.equal(isInside("/x/b", "/a/b"), false);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { loadTokenizedSamples, readRawSamples } from "../../src/pipeline/dataset.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { UsageError } from "../../src/errors.js";
import { TINY, tempDir } from "../helpers.js";

const dir = tempDir("moecal-ds-");
const tok = loadTokenizer(TINY);
function file(name: string, content: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content);
  return f;
}

test("JSON lines with text: BOS + bytes, truncated, file order, empty samples skipped", () => {
  const f = file("a.jsonl", ['{"text": "abc"}', '{"text": ""}', "", '{"text": "hello world"}'].join("\n"));
  assert.deepEqual(loadTokenizedSamples(f, tok, { maxSeqLength: 4 }), [
    [256, 97, 98, 99],
    [256, 104, 101, 108],
  ]);
  assert.equal(loadTokenizedSamples(f, tok, { maxSeqLength: 8, numSamples: 1 }).length, 1);
});

test("plain text: one sample per blank-line-separated block", () => {
  const f = file("b.txt", "first block\nstill first\n\nsecond\n\n\n");
  assert.deepEqual(readRawSamples(f), [{ text: "first block\nstill first" }, { text: "second" }, { text: "" }]);
  assert.equal(loadTokenizedSamples(f, tok, { maxSeqLength: 64 }).length, 2);
});

test("messages are rendered with the chat template", () => {
  const d = fs.mkdtempSync(path.join(dir, "chat-"));
  for (const n of ["tokenizer.json"]) fs.copyFileSync(path.join(TINY, n), path.join(d, n));
  const cfg = JSON.parse(fs.readFileSync(path.join(TINY, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
  cfg.chat_template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}";
  fs.writeFileSync(path.join(d, "tokenizer_config.json"), JSON.stringify(cfg));
  const t = loadTokenizer(d);
  const f = file(
    "c.jsonl",
    JSON.stringify({
      messages: [
        { role: "user", content: "hi" },
        { role: "assistant", content: "yo" },
      ],
    }),
  );
  const [ids] = loadTokenizedSamples(f, t, { maxSeqLength: 64 });
  assert.equal(t.decode(ids ?? []), "<|bos|><user>hi\n<assistant>yo\n");
});

test("shuffling is deterministic in the seed", () => {
  const f = file("d.jsonl", Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `s${i}` })).join("\n"));
  const a = loadTokenizedSamples(f, tok, { maxSeqLength: 8, shuffleSeed: 1 });
  assert.deepEqual(a, loadTokenizedSamples(f, tok, { maxSeqLength: 8, shuffleSeed: 1 }));
  assert.notDeepEqual(a, loadTokenizedSamples(f, tok, { maxSeqLength: 8, shuffleSeed: null }));
});

test("the seed draws the samples Hugging Face `ds.shuffle(seed=1).select(range(5))` draws", () => {
  const f = file("d.jsonl", Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `s${i}` })).join("\n"));
  const got = loadTokenizedSamples(f, tok, { maxSeqLength: 8, shuffleSeed: 1, numSamples: 5 }).map((ids) => tok.decode(ids));
  // np.random.default_rng(1).permutation(20) = [1, 10, 18, 16, 7, 11, ...]
  assert.deepEqual(
    got,
    ["s1", "s10", "s18", "s16", "s7"].map((s) => `<|bos|>${s}`),
  );
});

test("errors: malformed line (with its number), missing fields, empty dataset, only empty samples", () => {
  assert.throws(
    () => loadTokenizedSamples(file("e.jsonl", '{"text": "a"}\n{"text": oops}\n'), tok, { maxSeqLength: 8 }),
    (e: unknown) => e instanceof UsageError && /line 2: not valid JSON/.test(e.message),
  );
  assert.throws(
    () => loadTokenizedSamples(file("f.jsonl", '{"prompt": "a"}\n'), tok, { maxSeqLength: 8 }),
    /line 1: expected an object with a "text"/,
  );
  assert.throws(() => loadTokenizedSamples(file("g.jsonl", ""), tok, { maxSeqLength: 8 }), /no usable sample \(0 records/);
  assert.throws(
    () => loadTokenizedSamples(file("h.jsonl", '{"text": ""}\n{"text": "  "}\n'), tok, { maxSeqLength: 8 }),
    /no usable sample \(2 records, all empty\)/,
  );
  assert.throws(() => loadTokenizedSamples(path.join(dir, "missing.jsonl"), tok, { maxSeqLength: 8 }), /not found/);
});

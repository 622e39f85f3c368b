import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { TINY, tempDir } from "../helpers.js";

test("byte-level tokenizer: BOS then the UTF-8 bytes", () => {
  const t = loadTokenizer(TINY);
  assert.equal(t.bosTokenId, 256);
  assert.deepEqual(t.encode("Hi é{"), [256, 72, 105, 32, 195, 169, 123]);
  assert.equal(t.decode(t.encode("x = 1 + 2")), "<|bos|>x = 1 + 2");
});

/** A copy of the bundled tokenizer with tokenizer_config.json changed, and extra files. */
function tokenizerDir(patch: Record<string, unknown>, files: Record<string, string> = {}): string {
  const d = tempDir("moecal-tok-");
  fs.copyFileSync(path.join(TINY, "tokenizer.json"), path.join(d, "tokenizer.json"));
  const cfg = { ...(JSON.parse(fs.readFileSync(path.join(TINY, "tokenizer_config.json"), "utf8")) as Record<string, unknown>), ...patch };
  fs.writeFileSync(path.join(d, "tokenizer_config.json"), JSON.stringify(cfg));
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(d, name), text);
  return d;
}

test("chat template as transformers resolves it: chat_template.jinja wins, else the config's string, else its 'default' named template", () => {
  assert.equal(loadTokenizer(TINY).chatTemplate, null);
  assert.equal(loadTokenizer(tokenizerDir({ chat_template: "A" })).chatTemplate, "A");
  assert.equal(loadTokenizer(tokenizerDir({ chat_template: "A" }, { "chat_template.jinja": "B" })).chatTemplate, "B");
  const named = [
    { name: "tool_use", template: "T" },
    { name: "default", template: "D" },
  ];
  assert.equal(loadTokenizer(tokenizerDir({ chat_template: named })).chatTemplate, "D");
  assert.equal(loadTokenizer(tokenizerDir({ chat_template: [{ name: "tool_use", template: "T" }] })).chatTemplate, null);
});

test("special tokens given as added-token objects are read by their content", () => {
  const t = loadTokenizer(
    tokenizerDir({ bos_token: { content: "<|bos|>", lstrip: false, __type: "AddedToken" }, eos_token: { content: "<|eos|>" } }),
  );
  assert.equal(t.bosToken, "<|bos|>");
  assert.equal(t.eosToken, "<|eos|>");
  assert.equal(t.bosTokenId, 256);
});

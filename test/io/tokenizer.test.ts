import { test } from "node:test";
import assert from "node:assert/strict";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { TINY } from "../helpers.js";

test("byte-level tokenizer: BOS then the UTF-8 bytes", () => {
  const t = loadTokenizer(TINY);
  assert.equal(t.bosTokenId, 256);
  assert.deepEqual(t.encode("Hi é{"), [256, 72, 105, 32, 195, 169, 123]);
  assert.equal(t.decode(t.encode("x = 1 + 2")), "<|bos|>x = 1 + 2");
});

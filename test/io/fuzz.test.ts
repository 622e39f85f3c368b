import { test } from "node:test";
import assert from "node:assert/strict";
import { fuzz } from "./fuzz.js";

test("fuzzed safetensors files: the reader returns the declared bytes or throws MoecalError (1000 cases)", () => {
  // checkOne throws on any other outcome: bytes that differ from the declared range, or an error that is not moecal's
  const { ok, rejected } = fuzz(1000, 20261126);
  // both outcomes occur: the mutations reach past the header checks and into them
  assert.ok(ok > 100 && rejected > 100, `ok ${ok}, rejected ${rejected}`);
});

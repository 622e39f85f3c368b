import { test } from "node:test";
import assert from "node:assert/strict";
import { fuzzInspect } from "./inspect-fuzz.js";

// a hang fails the test through its timeout
test("fuzzed compressed-tensors checkpoints: inspect reports, never an internal error (400 cases)", { timeout: 600_000 }, async () => {
  const { clean, problems, refused } = await fuzzInspect(400, 20261129);
  // inspect turns every unreadable part into a reported problem rather than refusing the folder
  assert.equal(refused, 0);
  // most mutations break the checkpoint; some (a flipped data byte, a no-op field value) leave it valid
  assert.ok(problems > 300 && clean > 0, `problems ${problems}, clean ${clean}`);
});

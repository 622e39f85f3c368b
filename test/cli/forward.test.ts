import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { SafetensorsFile } from "../../src/io/safetensors.js";
import { GOLDEN, ROOT, assertClose, golden, tempDir } from "../helpers.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");

test("moecal forward on the golden ids writes logits and hidden states matching the reference", () => {
  const out = path.join(tempDir("moecal-fwd-"), "out.safetensors");
  const r = spawnSync(process.execPath, [cli, "forward", "--input-ids", path.join(GOLDEN, "forward.safetensors"), "--output", out], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const f = SafetensorsFile.open(out);
  const g = golden("forward.safetensors");
  assert.deepEqual(f.info("logits").shape, [2, 96, 260]);
  assert.equal(f.info("logits").dtype, "F32");
  assertClose("logits", f.readF32("logits"), g.readF32("logits"), 1e-5);
  assertClose("hidden_states.4", f.readF32("hidden_states.4"), g.readF32("hidden_states.4"), 1e-5);
});

test("moecal forward with a missing input prints a message, not a stack, and exits non-zero", () => {
  const r = spawnSync(process.execPath, [cli, "forward", "--input-ids", "/nonexistent.safetensors", "--output", "/tmp/x"], {
    encoding: "utf8",
  });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /\/nonexistent.safetensors: not found/);
  assert.doesNotMatch(r.stderr, /at .*\.js:\d+/);
});

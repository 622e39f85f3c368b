import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { ROOT, TEXT } from "../helpers.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");

test("moecal coverage --json on eval-arith: per-layer routed counts sum to tokens x top-k; every expert saw every token", () => {
  const r = spawnSync(
    process.execPath,
    [cli, "coverage", "--dataset", path.join(TEXT, "eval-arith.jsonl"), "--num-samples", "4", "--max-seq-length", "64", "--json"],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { layers: Record<string, { routed: number[]; seen: number[] }>; tokens: number; samples: number };
  assert.equal(out.samples, 4);
  assert.deepEqual(Object.keys(out.layers), ["1", "2", "3"]);
  assert.equal(out.tokens, 4 * 64); // arithmetic samples are longer than 64 bytes
  for (const [layer, c] of Object.entries(out.layers)) {
    assert.equal(c.routed.length, 16, `layer ${layer}`);
    assert.equal(
      c.routed.reduce((a, b) => a + b, 0),
      out.tokens * 2,
      `layer ${layer} routed sum`,
    );
    assert.deepEqual(c.seen, new Array(16).fill(out.tokens), `layer ${layer} seen`);
  }
});

test("moecal coverage table output names every layer", () => {
  const r = spawnSync(
    process.execPath,
    [cli, "coverage", "--dataset", path.join(TEXT, "eval-json.jsonl"), "--num-samples", "2", "--max-seq-length", "32"],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /2 samples, 64 tokens/);
  for (const l of ["1", "2", "3"]) assert.match(r.stdout, new RegExp(`^\\s+${l} `, "m"));
});

test("bad option values are reported, not thrown", () => {
  const r = spawnSync(process.execPath, [cli, "coverage", "--dataset", "x.jsonl", "--num-samples", "-3"], { encoding: "utf8" });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--num-samples must be an integer >= 1/);
});

/**
 * Resume inside an MoE layer run in expert groups: oneshot killed (SIGKILL) after a group's tensors,
 * its routed sums or its state resumes after the last group saved, and the output is byte-identical
 * to an uninterrupted run of the layers whole.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, assertSameFiles, jsonLines, tempDir } from "../helpers.js";

const child = path.join(ROOT, "dist", "test", "pipeline", "resume-child.js");
const tmp = tempDir("moecal-groups-resume-");
const run = (args: string[]): ReturnType<typeof spawnSync> => spawnSync(process.execPath, [child, ...args], { encoding: "utf8" });
const reference = path.join(tmp, "whole");

test("reference: the bundled model's layers run whole", () => {
  const r = run([reference]);
  assert.equal(r.status, 0, String(r.stderr));
});

// the bundled model: layer 0 dense, layers 1-3 MoE with 16 experts, here in groups of 5 (5, 5, 5, 1)
for (const [layer, stage, k, resume] of [
  [1, "group", 1, { layer: 1, done: 2 }],
  [1, "group-tensors", 2, { layer: 1, done: 2 }],
  [2, "group-sums", 0, null],
  [3, "group", 3, { layer: 3, done: 4 }],
] as const) {
  test(`SIGKILL in layer ${layer} after group ${k}'s ${stage === "group" ? "state" : stage.slice(6)}: the rerun resumes ${resume ? `after ${resume.done} groups` : "at the layer's start"} and writes the whole layers' bytes`, () => {
    const out = path.join(tmp, `killed-${layer}-${stage}-${k}`);
    const args = [out, "--expert-group-size", "5"];
    const killed = run([...args.slice(0, 1), String(layer), stage, ...args.slice(1), "--kill-at-group", String(k)]);
    assert.equal(killed.signal, "SIGKILL", String(killed.stderr));
    const again = run(args);
    assert.equal(again.status, 0, String(again.stderr));
    const resumed = jsonLines(again.stdout).find((e) => e.kind === "resume-groups");
    if (resume) assert.deepEqual(resumed, { kind: "resume-groups", ...resume, groups: 4 });
    else assert.equal(resumed, undefined);
    assertSameFiles(out, reference);
  });
}

test("qwen3_moe, whose layer 0 is an MoE layer: SIGKILL after its first group's state resumes inside layer 0 and writes the whole layers' bytes", () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  const whole = path.join(tmp, "qwen3-whole");
  assert.equal(run([whole, "--model", model]).status, 0);
  const out = path.join(tmp, "qwen3-killed");
  const args = ["--model", model, "--expert-group-size", "3"];
  assert.equal(run([out, "0", "group", ...args, "--kill-at-group", "0"]).signal, "SIGKILL");
  const again = run([out, ...args]);
  assert.equal(again.status, 0, String(again.stderr));
  const ev = jsonLines(again.stdout);
  assert.deepEqual(ev[0], { kind: "resume", layer: -1 });
  assert.deepEqual(ev[1], { kind: "resume-groups", layer: 0, done: 1, groups: 3 });
  assertSameFiles(out, whole);
});

test("a damaged group state, or a link planted in place of a group's file, is refused naming the file; --restart starts over", () => {
  const out = path.join(tmp, "damaged");
  const args = [out, "--expert-group-size", "5"];
  assert.equal(run([...args.slice(0, 1), "1", "group", ...args.slice(1), "--kill-at-group", "1"]).signal, "SIGKILL");
  const work = path.join(tmp, ".damaged.moecal-work");
  const state = path.join(work, "layer-1-groups.json");
  const saved = fs.readFileSync(state);
  fs.writeFileSync(state, "{ not json");
  const bad = run(args);
  assert.equal(bad.status, 1, String(bad.stderr));
  assert.match(String(bad.stderr), /layer-1-groups\.json: not a group state moecal wrote .*--restart/);
  fs.writeFileSync(state, saved);
  // the routed sums after two groups, replaced by a link to a file outside the work folder
  const sums = path.join(work, "moe-1-routed-2.bin");
  const outside = path.join(tmp, "outside.bin");
  const before = fs.readFileSync(sums);
  fs.copyFileSync(sums, outside);
  fs.rmSync(sums);
  fs.symlinkSync(outside, sums);
  const linked = run(args);
  assert.equal(linked.status, 1, String(linked.stderr));
  assert.match(String(linked.stderr), /moe-1-routed-2\.bin is not a regular file \(moecal never follows links in its work folder\)/);
  assert.ok(fs.readFileSync(outside).equals(before), "the link's target untouched");
  const restarted = run([...args, "--restart"]);
  assert.equal(restarted.status, 0, String(restarted.stderr));
  assertSameFiles(out, reference);
});

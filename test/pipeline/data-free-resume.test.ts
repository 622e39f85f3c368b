/**
 * The data-free path after a crash: killed (SIGKILL) after an output shard's file or after its
 * record, a rerun of the same command goes on after the last recorded shard and writes an output
 * byte-identical to an uninterrupted run's, whatever the number of worker threads; a rerun with
 * other options is refused naming what differs, --restart starts over, a damaged shard is named,
 * and a calibrated run does not discard a data-free run's shards (nor the reverse).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, assertSameFiles, jsonLines, tempDir } from "../helpers.js";
import { randomModel } from "../../src/pipeline/random-model.js";

const child = path.join(ROOT, "dist", "test", "pipeline", "data-free-child.js");
const tmp = tempDir("moecal-data-free-resume-");
// the bundled model's shape, 10 layers deep: its W8A16 output fills 5 shards of 1 MiB
const model = randomModel({ output: path.join(tmp, "model"), layers: 10 }).output;
const run = (args: string[]): ReturnType<typeof spawnSync> =>
  spawnSync(process.execPath, [child, ...args, "--model", model], { encoding: "utf8" });
const workOf = (out: string): string => path.join(path.dirname(out), `.${path.basename(out)}.moecal-work`);
const reference = path.join(tmp, "reference");

test("an uninterrupted data-free run writes several shards, counts every source byte and leaves no work folder", () => {
  const r = run([reference, "--workers", "0"]);
  assert.equal(r.status, 0, String(r.stderr));
  assert.ok(fs.readdirSync(reference).filter((f) => f.endsWith(".safetensors")).length >= 4, "at least 4 shards");
  const last = jsonLines(r.stdout).at(-1) as { kind: string; done: number; total: number; resumed: number };
  assert.equal(last.kind, "bytes");
  const source = fs
    .readdirSync(model)
    .filter((f) => f.endsWith(".safetensors"))
    .reduce((a, f) => a + fs.statSync(path.join(model, f)).size, 0);
  assert.ok(last.total <= source && last.total > 0.95 * source, `${last.total} of ${source} source bytes counted`);
  assert.equal(last.resumed, 0);
  assert.equal(fs.existsSync(workOf(reference)), false);
});

for (const [stage, shard, workers, resumed] of [
  ["shard-file", "0", "2", 0],
  ["shard", "0", "0", 1],
  ["shard", "1", "2", 2],
  ["shard-file", "2", "3", 2],
] as const) {
  test(`SIGKILL after shard ${shard}'s ${stage === "shard" ? "record" : "file"} (${workers} workers): the rerun goes on after ${resumed} shard(s), byte-identical`, () => {
    const out = path.join(tmp, `killed-${stage}-${shard}`);
    assert.equal(run([out, stage, shard, "--workers", workers]).signal, "SIGKILL");
    assert.equal(fs.existsSync(out), false, "no output");
    const again = run([out, "--workers", workers]);
    assert.equal(again.status, 0, String(again.stderr));
    const events = jsonLines(again.stdout);
    if (resumed > 0) {
      assert.deepEqual(events[0], { kind: "resume-shards", shards: resumed });
      assert.ok((events.at(-1) as { resumed: number }).resumed > 0, "bytes written before count as resumed");
    } else assert.equal(events[0]?.kind, "bytes", "started afresh");
    assertSameFiles(out, reference);
    assert.equal(fs.existsSync(workOf(out)), false, "work folder removed after success");
  });
}

test("a rerun with another scheme is refused naming it; --restart starts over; a calibrated run keeps the shards", () => {
  const out = path.join(tmp, "changed");
  assert.equal(run([out, "shard", "1"]).signal, "SIGKILL");
  const refused = run([out, "--scheme", "W4A16"]);
  assert.equal(refused.status, 1);
  assert.match(
    String(refused.stderr),
    /holds the finished shards of a run with other inputs \(differs: option scheme \("W8A16" -> "W4A16"\)/,
  );
  const calibrated = run([out, "--calibrate"]);
  assert.equal(calibrated.status, 1);
  assert.match(
    String(calibrated.stderr),
    /holds the finished shards of a data-free run to this output; rerun that command to resume it, or pass --restart/,
  );
  assert.ok(fs.existsSync(path.join(workOf(out), "shards.json")), "the shards are kept");
  const restarted = run([out, "--scheme", "W4A16", "--restart"]);
  assert.equal(restarted.status, 0, String(restarted.stderr));
  assert.equal(jsonLines(restarted.stdout)[0]?.kind, "bytes", "started afresh");
});

test("a recorded shard that was truncated, or replaced by a link, is named and nothing is written", () => {
  const out = path.join(tmp, "damaged");
  assert.equal(run([out, "shard", "1"]).signal, "SIGKILL");
  const shard = path.join(workOf(out), "shard-1.safetensors");
  fs.truncateSync(shard, 100);
  const r = run([out]);
  assert.equal(r.status, 1);
  assert.match(
    String(r.stderr),
    /the work folder .* is damaged: shards\.json lists shard-1\.safetensors, but it has 100 bytes, not \d+; rerun with --restart/,
  );
  fs.rmSync(shard);
  fs.symlinkSync(path.join(model, "config.json"), shard);
  const linked = run([out]);
  assert.equal(linked.status, 1);
  assert.match(String(linked.stderr), /shard-1\.safetensors: is a symlink, which moecal never follows in its work folder/);
  assert.equal(fs.existsSync(out), false);
});

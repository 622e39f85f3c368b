/**
 * Resume after a crash: oneshot killed (SIGKILL) at several points of a layer's checkpoint, and
 * with half-written state files left behind, resumes after its last finished layer on a rerun of
 * the same command and writes an output whose every file is byte-identical to an uninterrupted
 * run's; a rerun with other inputs is refused, naming what differs; --restart discards the state.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, assertSameFiles, jsonLines, tempDir } from "../helpers.js";
import { Tensor } from "../../src/engine/tensor.js";
import { WorkFolder } from "../../src/pipeline/work-folder.js";

const MANIFEST = { moecal_version: "t", model_sha256: "m", tokenizer: {}, dataset_sha256: "d", samples_sha256: "s", options: {} };
const child = path.join(ROOT, "dist", "test", "pipeline", "resume-child.js");
const tmp = tempDir("moecal-resume-");
const run = (args: string[]): ReturnType<typeof spawnSync> => spawnSync(process.execPath, [child, ...args], { encoding: "utf8" });
const workOf = (out: string): string => path.join(path.dirname(out), `.${path.basename(out)}.moecal-work`);

const reference = path.join(tmp, "reference");

test("an uninterrupted run leaves no work folder", () => {
  const r = run([reference]);
  assert.equal(r.status, 0, String(r.stderr));
  assert.equal(fs.existsSync(workOf(reference)), false);
});

for (const [layer, stage, resumesAfter] of [
  [0, "state", 0],
  [1, "tensors", 0],
  [2, "hidden", 1],
  [3, "state", 3],
] as const) {
  test(`SIGKILL in layer ${layer}'s checkpoint (after its ${stage} file): the rerun resumes after layer ${resumesAfter} and its output is byte-identical`, () => {
    const out = path.join(tmp, `killed-${layer}-${stage}`);
    const killed = run([out, String(layer), stage]);
    assert.equal(killed.signal, "SIGKILL");
    assert.equal(fs.existsSync(out), false, "no output");
    assert.ok(fs.existsSync(path.join(workOf(out), "state.json")) || layer === 0, "state kept");
    const again = run([out]);
    assert.equal(again.status, 0, String(again.stderr));
    assert.deepEqual(jsonLines(again.stdout)[0], { kind: "resume", layer: resumesAfter });
    assertSameFiles(out, reference);
    assert.equal(fs.existsSync(workOf(out)), false, "work folder removed after success");
  });
}

// the work folder does not depend on the family: one per kind of layer layout (per-expert tensors,
// FP8 sources dequantized on load, fused 3-D experts presented per expert)
for (const family of ["qwen3_moe", "deepseek_v3-fp8", "qwen3_5_moe"]) {
  test(`${family}: killed after layer 1's state, the rerun resumes and writes what an uninterrupted run writes`, () => {
    const model = path.join(ROOT, "test", "fixtures", `tiny-${family}`);
    const whole = path.join(tmp, `${family}-whole`);
    const out = path.join(tmp, `${family}-killed`);
    assert.equal(run([whole, "--model", model]).status, 0);
    assert.equal(run([out, "1", "state", "--model", model]).signal, "SIGKILL");
    const again = run([out, "--model", model]);
    assert.equal(again.status, 0, String(again.stderr));
    assert.deepEqual(jsonLines(again.stdout)[0], { kind: "resume", layer: 1 });
    assertSameFiles(out, whole);
  });
}

test("a recipe run (GPTQ NVFP4 experts, round-to-nearest FP8_BLOCK attention) killed after layer 1's state resumes to the same bytes", () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  const recipe = path.join(ROOT, "test", "fixtures", "recipes", "flagship_nvfp4_fp8_block.yaml");
  const whole = path.join(tmp, "recipe-whole");
  const out = path.join(tmp, "recipe-killed");
  assert.equal(run([whole, "--model", model, "--recipe", recipe]).status, 0);
  assert.equal(run([out, "1", "state", "--model", model, "--recipe", recipe]).signal, "SIGKILL");
  const again = run([out, "--model", model, "--recipe", recipe]);
  assert.equal(again.status, 0, String(again.stderr));
  assert.deepEqual(jsonLines(again.stdout)[0], { kind: "resume", layer: 1 });
  assertSameFiles(out, whole);
});

test("files half-written when the process died (temporaries beside the state) do not change the resumed output", () => {
  const out = path.join(tmp, "half-written");
  assert.equal(run([out, "1", "state"]).signal, "SIGKILL");
  const work = workOf(out);
  // what a kill in the middle of layer 2's checkpoint leaves: partial temporaries
  fs.writeFileSync(path.join(work, "layer-2.safetensors.tmp"), Buffer.from("partial"));
  fs.writeFileSync(path.join(work, "hidden-2.bin.tmp"), Buffer.alloc(100, 7));
  fs.writeFileSync(path.join(work, "state.json.tmp"), "{");
  const again = run([out]);
  assert.equal(again.status, 0, String(again.stderr));
  assert.deepEqual(jsonLines(again.stdout)[0], { kind: "resume", layer: 1 });
  assertSameFiles(out, reference);
});

test("a rerun with other inputs refuses to resume and says what differs; --restart discards the old state", () => {
  const out = path.join(tmp, "changed");
  assert.equal(run([out, "2", "state"]).signal, "SIGKILL");
  const refused = run([out, "--num-samples", "3"]);
  assert.notEqual(refused.status, 0);
  assert.match(
    String(refused.stderr),
    /holds the finished layers of a run with other inputs \(differs: option num_samples \(4 -> 3\)\).*--restart/,
  );
  assert.ok(fs.existsSync(path.join(workOf(out), "state.json")), "the old state is kept");
  const restarted = run([out, "--num-samples", "3", "--restart"]);
  assert.equal(restarted.status, 0, String(restarted.stderr));
  assert.equal(jsonLines(restarted.stdout)[0]?.kind, "layer-done", "started from layer 0");
  assert.equal(fs.existsSync(workOf(out)), false);
});

test("hidden states written one sample at a time read back exactly, in groups of at most maxTokens tokens", async () => {
  const out = path.join(tmp, "chunks-out");
  const work = new WorkFolder(out, MANIFEST, false, 4);
  const lengths = [3, 5, 2, 9, 1];
  const H = 4;
  const w = work.hiddenWriter(0);
  const samples = lengths.map(
    (S, s) =>
      new Tensor(
        Float32Array.from({ length: S * H }, (_, k) => s * 100 + k),
        [1, S, H],
      ),
  );
  for (const t of samples) w.append(t);
  w.commit();
  const seen: number[][] = [];
  const got: Tensor[] = [];
  for await (const chunk of work.hiddenChunks(0, lengths, H, 7)) {
    seen.push(chunk.map((t) => t.dim(1)));
    got.push(...chunk);
  }
  // 3+2 would not fit after 5; a sample longer than the limit is a group of its own
  assert.deepEqual(seen, [[3], [5, 2], [9], [1]]);
  assert.deepEqual(
    got.map((t) => [...t.data]),
    samples.map((t) => [...t.data]),
  );
  await assert.rejects(async () => {
    for await (const _ of work.hiddenChunks(0, [3, 5], H, 7)) void _;
  }, /bytes, expected/);
  work.remove();
});

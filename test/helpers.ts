import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { Tensor } from "../src/engine/tensor.js";
import { SafetensorsFile, rawToInts } from "../src/io/safetensors.js";
import { Checkpoint } from "../src/io/checkpoint.js";
import { type NamedRaw, writeSafetensors } from "../src/io/writer.js";
import type { LoadedModel } from "../src/models/registry.js";
import { type AfmoeConfig, AfmoeForCausalLM } from "../src/models/afmoe/index.js";
import { openServed } from "../src/pipeline/serving.js";

const here = path.dirname(fileURLToPath(import.meta.url));
/** Repository root (tests run from dist/test). */
export const ROOT = path.resolve(here, here.includes(`${path.sep}dist${path.sep}`) ? "../.." : "..");
export const TINY = path.join(ROOT, "models", "tiny-afmoe");
export const GOLDEN = path.join(ROOT, "test", "fixtures", "golden");
export const TEXT = path.join(ROOT, "test", "fixtures", "text");

const tempDirs: string[] = [];
/**
 * A fresh folder under the system's temporary folder, removed when this test file's process exits
 * (node --test runs each file in a process of its own): a run of the suite leaves nothing behind.
 */
export function tempDir(prefix: string): string {
  if (tempDirs.length === 0)
    process.on("exit", () => {
      for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
    });
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}

export function golden(name: string): SafetensorsFile {
  return SafetensorsFile.open(path.join(GOLDEN, name));
}

export function goldenInts(file: SafetensorsFile, name: string): number[] {
  return rawToInts(file.readRaw(name), name);
}

/** Relative error ||a - b|| / ||b||. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    const d = (a[i] as number) - (b[i] as number);
    num += d * d;
    den += (b[i] as number) ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den || 1);
}

/**
 * Assert relative error <= tol; on failure the message names the tensor, its first
 * differing values and the max difference.
 */
export function assertClose(name: string, actual: Tensor | ArrayLike<number>, expected: Tensor | ArrayLike<number>, tol: number): number {
  const a = actual instanceof Tensor ? actual.data : actual;
  const e = expected instanceof Tensor ? expected.data : expected;
  assert.equal(a.length, e.length, `${name}: ${a.length} values, expected ${e.length}`);
  const err = relErr(a, e);
  if (!(err <= tol)) {
    let maxDiff = 0;
    let maxAt = 0;
    const firsts: string[] = [];
    for (let i = 0; i < e.length; i++) {
      const d = Math.abs((a[i] as number) - (e[i] as number));
      if (!(d <= maxDiff)) {
        maxDiff = d;
        maxAt = i;
      }
      if (firsts.length < 5 && d > tol * Math.abs(e[i] as number) + 1e-12) firsts.push(`[${i}] ${a[i]} vs ${e[i]}`);
    }
    assert.fail(
      `${name}: relative error ${err.toExponential(3)} > ${tol}; first differences ${firsts.join(", ")}; max |diff| ${maxDiff} at ${maxAt}`,
    );
  }
  return err;
}

export function assertIntsEqual(name: string, actual: ArrayLike<number>, expected: ArrayLike<number>): void {
  assert.equal(actual.length, expected.length, `${name}: ${actual.length} values, expected ${expected.length}`);
  const diffs: string[] = [];
  let count = 0;
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) {
      count++;
      if (diffs.length < 5) diffs.push(`[${i}] ${actual[i]} vs ${expected[i]}`);
    }
  }
  if (count) assert.fail(`${name}: ${count} of ${expected.length} values differ; first ${diffs.join(", ")}`);
}

/**
 * The golden forward inputs (forward.safetensors: input_ids [2, 96], BOS + bytes) written as a
 * JSON-lines dataset in `dir`; returns the file and the ids.
 */
export function goldenDataset(dir: string): { file: string; ids: number[]; batch: number; seq: number } {
  const f = golden("forward.safetensors");
  const ids = goldenInts(f, "input_ids");
  const [batch, seq] = f.info("input_ids").shape as [number, number];
  const texts = Array.from({ length: batch }, (_, b) => Buffer.from(ids.slice(b * seq + 1, (b + 1) * seq)).toString("utf8"));
  const file = path.join(dir, "golden.jsonl");
  fs.writeFileSync(file, `${texts.map((text) => JSON.stringify({ text })).join("\n")}\n`);
  return { file, ids, batch, seq };
}

/** An AFMoE checkpoint opened as served (the registry's model, typed as AFMoE for tests that reach into its modules). */
export function openAfmoe(dir: string, opts: { load?: boolean } = {}): LoadedModel & { config: AfmoeConfig; model: AfmoeForCausalLM } {
  const m = openServed(dir, opts);
  if (!(m.model instanceof AfmoeForCausalLM)) throw new Error(`${dir} is not an AFMoE checkpoint`);
  return m as LoadedModel & { config: AfmoeConfig; model: AfmoeForCausalLM };
}

/** A copy of checkpoint folder `src` at `dir` with its tensors changed by `mutate` (written unchecked: broken on purpose). */
export function mutatedCopy(src: string, dir: string, mutate: (t: Map<string, NamedRaw>) => void): string {
  fs.mkdirSync(dir);
  for (const f of fs.readdirSync(src))
    if (!f.endsWith(".safetensors") && !f.endsWith("index.json")) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const ck = Checkpoint.open(src);
  const tensors = new Map(ck.names().map((n) => [n, { name: n, ...ck.readRaw(n) }]));
  mutate(tensors);
  writeSafetensors(path.join(dir, "model.safetensors"), [...tensors.values()]);
  return dir;
}

/** A copy of fixture folder `src` (its golden references left out) at `dir`, which it creates. */
export function fixtureCopy(src: string, dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(src)) if (f !== "golden") fs.copyFileSync(path.join(src, f), path.join(dir, f));
  return dir;
}

/** Runs the built CLI in `cwd` as a user would: asserts it exits 0 and returns its stdout. */
export function cliIn(cwd: string): (...args: string[]) => string {
  const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
  return (...args) => {
    const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", cwd });
    assert.equal(r.status, 0, `${args[0]}: ${r.stderr}`);
    return r.stdout;
  };
}

/** `moecal eval --model --reference` on two prose samples, through `run` (cliIn): the mean per-token KL. */
export function evalKl(run: (...args: string[]) => string, model: string, reference: string): number {
  const args = ["--dataset", path.join(TEXT, "eval-prose.jsonl"), "--num-samples", "2", "--json", "--quiet"];
  return (JSON.parse(run("eval", "--model", model, "--reference", reference, ...args)) as { kl: number }).kl;
}

/** The files of two outputs that differ (moecal.json, which records how each was asked for, aside). */
export function filesDiffering(a: string, b: string): string[] {
  const names = fs.readdirSync(a).filter((f) => f !== "moecal.json");
  assert.deepEqual(
    names.sort(),
    fs
      .readdirSync(b)
      .filter((f) => f !== "moecal.json")
      .sort(),
  );
  return names.filter((f) => !fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))));
}

/** Every file of a folder (subfolders too), by relative name, as bytes. */
function folderFiles(dir: string): Map<string, Buffer> {
  return new Map(
    fs
      .readdirSync(dir, { recursive: true, encoding: "utf8" })
      .filter((f) => fs.statSync(path.join(dir, f)).isFile())
      .map((f) => [f, fs.readFileSync(path.join(dir, f))]),
  );
}

/** Two output folders hold the same files, byte for byte. */
export function assertSameFiles(out: string, reference: string): void {
  const want = folderFiles(reference);
  const got = folderFiles(out);
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [f, bytes] of want) assert.ok(bytes.equals(got.get(f) as Buffer), `${f} differs`);
}

/** A child process's stdout of one JSON object per line, parsed (progress events the test children print). */
export function jsonLines(stdout: unknown): Record<string, unknown>[] {
  return String(stdout)
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

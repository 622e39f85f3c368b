import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import type { NamedRaw } from "../../src/io/writer.js";
import { f32ToBf16 } from "../../src/engine/dtype.js";
import { ROOT, TINY, mutatedCopy, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-inspect-");
const clean = path.join(tmp, "clean");
const E = "model.layers.2.mlp.experts.5.gate_proj";

/** A copy of the clean checkpoint with its tensors changed by `mutate`. */
function broken(name: string, mutate: (t: Map<string, NamedRaw>) => void): string {
  return mutatedCopy(clean, path.join(tmp, name), mutate);
}

function bf16(values: number[], shape: number[], name: string): NamedRaw {
  return { name, dtype: "BF16", shape, bytes: new Uint8Array(f32ToBf16(Float32Array.from(values)).buffer) };
}

function scaleWith(t: Map<string, NamedRaw>, value: number): void {
  const s = t.get(`${E}.weight_scale`) as NamedRaw;
  const vals = new Array<number>(s.shape.reduce((a, b) => a * b, 1)).fill(0.01);
  vals[3] = value;
  t.set(s.name, bf16(vals, s.shape, s.name));
}

test("inspect: our own export has no problems", async () => {
  await oneshot({ method: "rtn", scheme: "W4A16", groupSize: 32, numSamples: 1, maxSeqLength: 8, output: clean, warn: () => undefined });
  const r = inspectCheckpoint(clean);
  assert.deepEqual(r.problems, []);
  assert.equal(r.quantized, 4 * 5 + 3 + 3 * (16 * 3 + 3)); // attention 5 per layer, dense MLP 3, experts and shared expert
  assert.deepEqual(r.formats, { "pack-quantized": r.quantized });
  assert.equal(r.ignored, 4);
});

const cases: [string, (t: Map<string, NamedRaw>) => void, RegExp][] = [
  ["nan-scale", (t) => scaleWith(t, NaN), new RegExp(`${E}.weight_scale: non-finite value NaN at index 3`)],
  ["zero-scale", (t) => scaleWith(t, 0), new RegExp(`${E}.weight_scale: zero or negative value 0 at index 3`)],
  ["extreme-scale", (t) => scaleWith(t, 1e6), new RegExp(`${E}.weight_scale: extreme value`)],
  ["missing-shape", (t) => void t.delete(`${E}.weight_shape`), new RegExp(`${E}.weight_shape: missing \\(expected I64 or I32 \\[2\\]\\)`)],
  [
    "zero-expert",
    (t) => {
      const p = t.get(`${E}.weight_packed`) as NamedRaw;
      t.set(p.name, { ...p, bytes: new Uint8Array(new Int32Array(p.bytes.byteLength / 4).fill(0x88888888 | 0).buffer) });
    },
    new RegExp(`${E}: every weight is zero`),
  ],
  [
    "wrong-packed-shape",
    (t) => {
      const p = t.get(`${E}.weight_packed`) as NamedRaw;
      t.set(p.name, { ...p, shape: [p.shape[0] as number, 8], bytes: p.bytes.slice(0, (p.shape[0] as number) * 8 * 4) });
    },
    new RegExp(`${E}.weight_packed: I32 \\[64, 8\\], expected I32 \\[64, 16\\]`),
  ],
  [
    "unlisted-unquantized",
    (t) => {
      for (const s of ["weight_packed", "weight_scale", "weight_shape"]) t.delete(`${E}.${s}`);
      t.set(`${E}.weight`, { name: `${E}.weight`, ...Checkpoint.open(TINY).readRaw(`${E}.weight`) });
    },
    new RegExp(`${E}: Linear left unquantized but not named in quantization_config.ignore`),
  ],
  [
    "split-experts",
    (t) => {
      for (const s of ["weight_packed", "weight_scale", "weight_shape"]) t.delete(`${E}.${s}`);
      t.set(`${E}.weight`, { name: `${E}.weight`, ...Checkpoint.open(TINY).readRaw(`${E}.weight`) });
    },
    /^model\.layers\.2\.mlp\.experts: vLLM runs its 48 routed-expert Linear layers as one fused MoE module with one quantization scheme, but config group 0: .*; unquantized: experts\.5\.gate_proj$/,
  ],
];

for (const [name, mutate, expected] of cases) {
  test(`inspect flags a broken checkpoint: ${name}`, () => {
    const dir = broken(name, mutate);
    const r = inspectCheckpoint(dir);
    assert.ok(
      r.problems.some((p) => expected.test(p)),
      `problems: ${r.problems.join(" | ")}`,
    );
  });
}

test("moecal inspect exits 1 on problems and 0 on a clean checkpoint", () => {
  const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
  const ok = spawnSync(process.execPath, [cli, "inspect", clean], { encoding: "utf8" });
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /no problems found/);
  const bad = spawnSync(process.execPath, [cli, "inspect", path.join(tmp, "nan-scale"), "--json"], { encoding: "utf8" });
  assert.equal(bad.status, 1);
  assert.ok((JSON.parse(bad.stdout) as { problems: string[] }).problems.length > 0);
});

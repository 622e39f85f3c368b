import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { rawToInts } from "../../src/io/safetensors.js";
import { TINY, TEXT, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-rtn-");
const output = path.join(tmp, "out");

/** The spec's formula, written out again independently of src/quantization. */
function bf16Bits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0] as number;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
function fromBf16(bits: number): number {
  return new Float32Array(new Uint32Array([bits << 16]).buffer)[0] as number;
}
function rint(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}
function expectedPacked(w: Float32Array, out: number, inF: number, group: number): { words: Int32Array; scales: Uint16Array } {
  const groups = inF / group;
  const scales = new Uint16Array(out * groups);
  const words = new Int32Array((out * inF) / 8);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < groups; g++) {
      let amax = 0;
      for (let c = 0; c < group; c++) amax = Math.max(amax, Math.abs(w[r * inF + g * group + c] as number));
      let s = Math.fround(amax / 7.5);
      if (s === 0) s = 2 ** -23;
      const sb = bf16Bits(s);
      scales[r * groups + g] = sb;
      const sv = fromBf16(sb);
      for (let c = 0; c < group; c++) {
        const k = g * group + c;
        const q = Math.max(-8, Math.min(7, rint(Math.fround((w[r * inF + k] as number) / sv))));
        const idx = r * (inF / 8) + (k >> 3);
        words[idx] = (words[idx] as number) | ((q + 8) << (4 * (k & 7)));
      }
    }
  }
  return { words, scales };
}

test("RTN W4A16 group 32 export: every expert Linear's packed words and bf16 scales equal an independent recomputation", async () => {
  await oneshot({
    method: "rtn",
    calibrate: true,
    scheme: "W4A16",
    groupSize: 32,
    numSamples: 2,
    maxSeqLength: 16,
    dataset: path.join(TEXT, "eval-prose.jsonl"),
    output,
    warn: () => undefined,
  });
  const src = Checkpoint.open(TINY);
  const q = Checkpoint.open(output);
  let checked = 0;
  for (const name of src.names()) {
    const m = /^(model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj)\.weight$/.exec(name);
    if (!m) continue;
    const p = m[1] as string;
    const [out, inF] = src.info(name).shape as [number, number];
    const exp = expectedPacked(src.readF32(name).data, out, inF, 32);
    assert.equal(q.has(name), false, `${name} must not be stored unquantized`);
    const packed = q.readRaw(`${p}.weight_packed`);
    assert.equal(packed.dtype, "I32");
    assert.deepEqual(packed.shape, [out, inF / 8]);
    assert.deepEqual(new Int32Array(packed.bytes.slice().buffer), exp.words, `${p}.weight_packed`);
    const scale = q.readRaw(`${p}.weight_scale`);
    assert.equal(scale.dtype, "BF16");
    assert.deepEqual(scale.shape, [out, inF / 32]);
    assert.deepEqual(new Uint16Array(scale.bytes.slice().buffer), exp.scales, `${p}.weight_scale`);
    assert.deepEqual(rawToInts(q.readRaw(`${p}.weight_shape`), "shape"), [out, inF]);
    checked++;
  }
  assert.equal(checked, 3 * 16 * 3);
});

test("the export copies unquantized tensors byte for byte with their dtype, and the side files", () => {
  const src = Checkpoint.open(TINY);
  const q = Checkpoint.open(output);
  for (const name of [
    "model.layers.1.mlp.expert_bias",
    "model.layers.2.mlp.router.gate.weight",
    "lm_head.weight",
    "model.embed_tokens.weight",
    "model.norm.weight",
    "model.layers.3.post_mlp_layernorm.weight",
  ]) {
    const a = src.readRaw(name);
    const b = q.readRaw(name);
    assert.equal(b.dtype, a.dtype, name);
    assert.deepEqual(b.shape, a.shape, name);
    assert.ok(Buffer.from(a.bytes).equals(Buffer.from(b.bytes)), `${name} bytes`);
  }
  assert.equal(q.info("model.layers.1.mlp.expert_bias").dtype, "F32");
  for (const f of [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "moecal.json",
    "coverage.svg",
    "model.safetensors.index.json",
  ]) {
    assert.ok(fs.existsSync(path.join(output, f)), f);
  }
  assert.deepEqual(fs.readdirSync(tmp), ["out"], "no temporary folder left beside the output");
});

test("config.json: quantization_config with sorted keys; ignore names every router gate and lm_head in full", () => {
  const cfg = JSON.parse(fs.readFileSync(path.join(output, "config.json"), "utf8")) as {
    quantization_config: Record<string, unknown>;
    model_type: string;
  };
  const qc = cfg.quantization_config;
  assert.equal(cfg.model_type, "afmoe");
  assert.deepEqual(Object.keys(qc), [...Object.keys(qc)].sort());
  assert.equal(qc.format, "pack-quantized");
  assert.equal(qc.quant_method, "compressed-tensors");
  assert.equal(qc.quantization_status, "compressed");
  const ignore = qc.ignore as string[];
  assert.deepEqual(ignore, [
    "model.layers.1.mlp.router.gate",
    "model.layers.2.mlp.router.gate",
    "model.layers.3.mlp.router.gate",
    "lm_head",
  ]);
  const w = ((qc.config_groups as Record<string, Record<string, unknown>>).group_0 as { weights: Record<string, unknown> }).weights;
  assert.deepEqual(w, {
    actorder: null,
    block_structure: null,
    dynamic: false,
    group_size: 32,
    num_bits: 4,
    observer: "minmax",
    observer_kwargs: {},
    strategy: "group",
    symmetric: true,
    type: "int",
  });
});

test("an existing non-empty output folder is refused without overwrite, and replaced with it", async () => {
  await assert.rejects(
    oneshot({ method: "rtn", numSamples: 1, maxSeqLength: 8, output, warn: () => undefined }),
    /exists and is not empty \(use --overwrite/,
  );
  // a file that only the old output holds: gone once the folder is replaced
  fs.writeFileSync(path.join(output, "left-by-the-old-run.txt"), "x");
  await oneshot({ method: "rtn", calibrate: true, numSamples: 2, maxSeqLength: 8, output, overwrite: true, warn: () => undefined });
  assert.equal(fs.existsSync(path.join(output, "left-by-the-old-run.txt")), false, "the old folder was replaced, not written into");
  assert.equal((JSON.parse(fs.readFileSync(path.join(output, "moecal.json"), "utf8")) as { num_samples: number }).num_samples, 2);
  assert.deepEqual(fs.readdirSync(tmp), ["out"]);
});

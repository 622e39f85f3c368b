import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { SCHEME_NAMES, type SchemeName } from "../../src/quantization/scheme.js";
import { TEXT, TINY, golden, goldenInts, openAfmoe, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-schemes-");
const g = golden("forward.safetensors");
const ids = { ids: Int32Array.from(goldenInts(g, "input_ids")), shape: [2, 96] };
const refLogits = g.readF32("logits").data;

/** Mean per-token KL(reference || model) from logits [T, V]. */
function meanKl(ref: Float32Array, got: Float32Array, V: number): number {
  let total = 0;
  const T = ref.length / V;
  for (let t = 0; t < T; t++) {
    const lse = (a: Float32Array): number => {
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, a[t * V + v] as number);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp((a[t * V + v] as number) - m);
      return m + Math.log(s);
    };
    const lr = lse(ref);
    const lg = lse(got);
    for (let v = 0; v < V; v++) {
      const p = (ref[t * V + v] as number) - lr;
      total += Math.exp(p) * (p - ((got[t * V + v] as number) - lg));
    }
  }
  return total / T;
}

/** Upper bounds on the mean KL from the BF16 model on the golden inputs (measured values are 3-20x lower). */
const KL_BOUND: Record<SchemeName, number> = {
  W4A16: 1e-2,
  W4A16_ASYM: 1e-2,
  W8A16: 5e-4,
  W8A8: 1e-3,
  FP8_DYNAMIC: 2e-3,
  FP8: 5e-3,
  NVFP4A16: 1e-2,
  NVFP4: 3e-2,
  FP8_BLOCK: 2e-3,
  MXFP4A16: 2e-2,
};

const expectedTensors: Record<SchemeName, { suffixes: string[]; weightDtype?: string }> = {
  W4A16: { suffixes: ["weight_packed", "weight_scale", "weight_shape"] },
  W4A16_ASYM: { suffixes: ["weight_packed", "weight_scale", "weight_shape", "weight_zero_point"] },
  W8A16: { suffixes: ["weight_packed", "weight_scale", "weight_shape"] },
  W8A8: { suffixes: ["weight", "weight_scale"], weightDtype: "I8" },
  FP8_DYNAMIC: { suffixes: ["weight", "weight_scale"], weightDtype: "F8_E4M3" },
  FP8: { suffixes: ["weight", "weight_scale", "input_scale"], weightDtype: "F8_E4M3" },
  NVFP4A16: { suffixes: ["weight_packed", "weight_scale", "weight_global_scale"] },
  NVFP4: { suffixes: ["weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"] },
  FP8_BLOCK: { suffixes: ["weight", "weight_scale"], weightDtype: "F8_E4M3" },
  MXFP4A16: { suffixes: ["weight_packed", "weight_scale"] },
};

for (const scheme of SCHEME_NAMES) {
  test(`${scheme}: exports, loads back, and its logits stay close to the BF16 model (KL < ${KL_BOUND[scheme]})`, async () => {
    const output = path.join(tmp, scheme);
    const { report } = await oneshot({
      scheme,
      numSamples: 2,
      maxSeqLength: 48,
      dataset: path.join(TEXT, "eval-prose.jsonl"),
      output,
      warn: () => undefined,
    });
    assert.equal(report.fallbacks.length, 0);
    const ck = Checkpoint.open(output);
    const p = "model.layers.2.mlp.experts.7.down_proj";
    const present = ck
      .names()
      .filter((n) => n.startsWith(`${p}.`))
      .map((n) => n.slice(p.length + 1))
      .sort();
    assert.deepEqual(present, [...expectedTensors[scheme].suffixes].sort());
    if (expectedTensors[scheme].weightDtype) assert.equal(ck.info(`${p}.weight`).dtype, expectedTensors[scheme].weightDtype);
    if (scheme === "W4A16_ASYM") assert.deepEqual(ck.info(`${p}.weight_zero_point`).shape, [128 / 8, 64 / 64]);
    if (scheme === "FP8") assert.deepEqual(ck.info(`${p}.weight_scale`).shape, [1]);
    if (scheme === "W8A8" || scheme === "FP8_DYNAMIC") assert.deepEqual(ck.info(`${p}.weight_scale`).shape, [128, 1]);
    if (scheme.startsWith("NVFP4")) {
      assert.deepEqual(ck.info(`${p}.weight_packed`).shape, [128, 32]);
      assert.equal(ck.info(`${p}.weight_packed`).dtype, "U8");
      assert.deepEqual(ck.info(`${p}.weight_scale`).shape, [128, 4]);
      assert.equal(ck.info(`${p}.weight_scale`).dtype, "F8_E4M3");
    }
    if (scheme === "MXFP4A16")
      assert.deepEqual([ck.info(`${p}.weight_scale`).dtype, ...ck.info(`${p}.weight_scale`).shape], ["U8", 128, 2]);
    if (scheme === "FP8_BLOCK") assert.deepEqual(ck.info(`${p}.weight_scale`).shape, [1, 1]);
    const { model } = openAfmoe(output);
    const out = await model.call({ ids });
    const kl = meanKl(refLogits, out.logits.data, 260);
    assert.ok(kl > 0 && kl < KL_BOUND[scheme], `${scheme}: KL ${kl}`);
  });
}

for (const scheme of ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8_DYNAMIC"] as const) {
  test(`${scheme} RTN: every loaded weight is within half a quantization step of the original`, async () => {
    const output = path.join(tmp, `${scheme}-rtn`);
    await oneshot({
      scheme,
      method: "rtn",
      groupSize: scheme.startsWith("W4") ? 32 : undefined,
      numSamples: 1,
      maxSeqLength: 8,
      output,
      warn: () => undefined,
    });
    const { source } = openAfmoe(output, { load: false });
    const orig = Checkpoint.open(TINY);
    const cfg = JSON.parse(fs.readFileSync(path.join(output, "config.json"), "utf8")) as {
      quantization_config: { config_groups: { group_0: { weights: { group_size: number | null } } } };
    };
    const gs = cfg.quantization_config.config_groups.group_0.weights.group_size;
    for (const name of [
      "model.layers.1.mlp.experts.3.up_proj.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.3.mlp.shared_experts.down_proj.weight",
    ]) {
      const w = orig.readF32(name);
      const q = source.readF32(name);
      const [out, inF] = w.shape as [number, number];
      const group = gs ?? inF;
      for (let r = 0; r < out; r++) {
        for (let c0 = 0; c0 < inF; c0 += group) {
          let mn = 0;
          let mx = 0;
          for (let c = c0; c < c0 + group; c++) {
            mn = Math.min(mn, w.data[r * inF + c] as number);
            mx = Math.max(mx, w.data[r * inF + c] as number);
          }
          // int: half a step (a whole step for asymmetric, where the rounded zero point can shift the
          // extremes by half a step more), plus the bf16 rounding of the scale at the clipped edge;
          // fp8: relative 1/16 of the value plus a subnormal step
          const levels = scheme.startsWith("W4") ? 15 : 255;
          const step = scheme === "FP8_DYNAMIC" ? 0 : scheme === "W4A16_ASYM" ? (mx - mn) / levels : (2 * Math.max(-mn, mx)) / levels;
          for (let c = c0; c < c0 + group; c++) {
            const a = w.data[r * inF + c] as number;
            const b = q.data[r * inF + c] as number;
            const tol =
              scheme === "FP8_DYNAMIC"
                ? Math.abs(a) / 16 + (Math.max(-mn, mx) / 448) * 2 ** -9
                : (scheme === "W4A16_ASYM" ? step : step / 2) * 1.01 + Math.abs(a) * 2 ** -7 + 1e-6;
            assert.ok(Math.abs(a - b) <= tol, `${name}[${r}, ${c}]: ${b} vs ${a} (tolerance ${tol})`);
          }
        }
      }
    }
  });
}

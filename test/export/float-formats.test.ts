/**
 * NVFP4 and FP8_BLOCK checkpoints of the bundled model: the global scales of the Linears vLLM runs
 * as one weight are equal, every expert's gate/up share one input global scale (all experts
 * calibrated on all tokens), the loader reads back exactly what round-to-nearest produced, and
 * inspect finds nothing in a clean export and names each planted defect.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import type { NamedRaw } from "../../src/io/writer.js";
import { rtnQuantize } from "../../src/quantization/gptq.js";
import { absMax, dequantize, nvfp4GlobalScale } from "../../src/quantization/params.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { TEXT, TINY, mutatedCopy, openAfmoe, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-float-");
const nvfp4 = path.join(tmp, "nvfp4");
const block = path.join(tmp, "block");
const mxfp4 = path.join(tmp, "mxfp4");
const common = {
  method: "rtn" as const,
  numSamples: 4,
  maxSeqLength: 64,
  dataset: path.join(TEXT, "eval-json.jsonl"),
  warn: () => undefined,
};
const L = "model.layers.1";
const f32 = (ck: Checkpoint, n: string): number => ck.readF32(n).data[0] as number;

test("NVFP4: fused members share the smallest of their global scales; every expert's gate/up one input global scale", async () => {
  await oneshot({ ...common, scheme: "NVFP4", output: nvfp4 });
  const ck = Checkpoint.open(nvfp4);
  const orig = Checkpoint.open(TINY);
  const own = (n: string): number => nvfp4GlobalScale(absMax(orig.readF32(`${n}.weight`).data), "BF16");
  const sets = [
    [`${L}.self_attn.q_proj`, `${L}.self_attn.k_proj`, `${L}.self_attn.v_proj`],
    [`${L}.mlp.experts.3.gate_proj`, `${L}.mlp.experts.3.up_proj`],
    [`${L}.mlp.shared_experts.gate_proj`, `${L}.mlp.shared_experts.up_proj`],
    ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
  ];
  let differed = 0;
  for (const set of sets) {
    const stored = set.map((n) => f32(ck, `${n}.weight_global_scale`));
    assert.equal(new Set(stored).size, 1, `${set.join(", ")}: ${stored.join(", ")}`);
    assert.equal(stored[0], Math.min(...set.map(own)));
    if (new Set(set.map(own)).size > 1) differed++;
  }
  assert.ok(differed >= 2, "the members' own global scales differ, so sharing is tested");
  // a down projection is its own weight in vLLM: its own global scale
  assert.equal(f32(ck, `${L}.mlp.experts.3.down_proj.weight_global_scale`), own(`${L}.mlp.experts.3.down_proj`));
  const inputs = Array.from({ length: 16 }, (_, e) => f32(ck, `${L}.mlp.experts.${e}.gate_proj.input_global_scale`));
  assert.equal(new Set(inputs).size, 1, "all experts calibrated on the same tokens");
  assert.equal(f32(ck, `${L}.mlp.experts.0.up_proj.input_global_scale`), inputs[0]);
  assert.deepEqual(inspectCheckpoint(nvfp4).problems, []);
});

test("NVFP4, FP8_BLOCK and MXFP4: the loader reads back exactly the round-to-nearest weights", async () => {
  await oneshot({ ...common, scheme: "FP8_BLOCK", output: block });
  assert.deepEqual(inspectCheckpoint(block).problems, []);
  await oneshot({ ...common, scheme: "MXFP4A16", output: mxfp4 });
  assert.deepEqual(inspectCheckpoint(mxfp4).problems, []);
  const orig = Checkpoint.open(TINY);
  for (const [dir, scheme] of [
    [nvfp4, "NVFP4"],
    [block, "FP8_BLOCK"],
    [mxfp4, "MXFP4A16"],
  ] as const) {
    const { source } = openAfmoe(dir, { load: false });
    for (const n of [`${L}.self_attn.o_proj`, `${L}.mlp.experts.9.down_proj`]) {
      const w = orig.readF32(`${n}.weight`);
      const [out, inF] = w.shape as [number, number];
      const q = rtnQuantize(w.data, out, inF, resolveScheme(scheme).weights, "BF16", n);
      assert.deepEqual(source.readF32(`${n}.weight`).data, dequantize(q), `${scheme} ${n}`);
    }
  }
});

test("inspect names a broken NVFP4 checkpoint's defects: fused global scales that differ, zero and non-finite scales", () => {
  const setF32 = (t: Map<string, NamedRaw>, n: string, v: number): void => {
    t.set(n, { name: n, dtype: "F32", shape: [1], bytes: new Uint8Array(Float32Array.of(v).buffer) });
  };
  const k = `${L}.self_attn.k_proj`;
  const cases: [string, (t: Map<string, NamedRaw>) => void, RegExp][] = [
    [
      "global-differs",
      (t) => setF32(t, `${k}.weight_global_scale`, 7),
      /k_proj.*one weight with one global scale, but their weight_global_scale differ/,
    ],
    ["global-nan", (t) => setF32(t, `${k}.input_global_scale`, NaN), /k_proj\.input_global_scale: non-finite value NaN/],
    [
      "zero-group-scale",
      (t) => {
        const s = t.get(`${k}.weight_scale`) as NamedRaw;
        const bytes = s.bytes.slice();
        bytes[5] = 0;
        t.set(s.name, { ...s, bytes });
      },
      /k_proj\.weight_scale: zero or negative value 0 at index 5/,
    ],
    [
      "packed-dtype",
      (t) => t.set(`${k}.weight_packed`, { ...(t.get(`${k}.weight_packed`) as NamedRaw), dtype: "I8" }),
      /k_proj\.weight_packed: I8 .* expected U8/,
    ],
  ];
  for (const [name, mutate, expected] of cases) {
    const r = inspectCheckpoint(mutatedCopy(nvfp4, path.join(tmp, name), mutate));
    assert.ok(
      r.problems.some((p) => expected.test(p)),
      `${name}: ${r.problems.join("; ")}`,
    );
  }
});

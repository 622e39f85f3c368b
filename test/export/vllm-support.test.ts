import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { vllmServingProblems } from "../../src/export/vllm-support.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { TEXT, tempDir } from "../helpers.js";

const qwen30b = { module: "model.layers.0.mlp.experts", hidden: 2048, intermediate: 768 };
const odd = { module: "model.layers.0.mlp.experts", hidden: 2048, intermediate: 96 };

test("vLLM support: Qwen3-30B-A3B-shaped experts load with every scheme; the kernels' shape and group rules are named", () => {
  for (const s of ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8_DYNAMIC", "FP8", "NVFP4A16", "NVFP4", "FP8_BLOCK"])
    assert.deepEqual(vllmServingProblems(resolveScheme(s), [qwen30b], [["model.layers.0.self_attn.q_proj", 4096, 2048]]), [], s);
  const [asym] = vllmServingProblems(resolveScheme("W4A16_ASYM"), [odd], []);
  assert.match(
    asym ?? "",
    /asymmetric int experts only with its Marlin MoE kernel, which refuses expert intermediate size 96 .*would not load/,
  );
  const [sym] = vllmServingProblems(resolveScheme("W4A16"), [odd], []);
  assert.match(sym ?? "", /falls back to its slower Triton WNA16 MoE kernel/);
  assert.match(vllmServingProblems(resolveScheme("W4A16", { groupSize: 16 }), [qwen30b], [])[0] ?? "", /group size 16/);
  assert.match(vllmServingProblems(resolveScheme("FP8_BLOCK"), [odd], [])[0] ?? "", /multiples of 128; vLLM would not load it/);
  assert.match(
    vllmServingProblems(resolveScheme("FP8_BLOCK"), [], [["k_proj", 64, 128]])[0] ?? "",
    /k_proj: \[64, 128\] is not a multiple of FP8 blocks/,
  );
});

test("oneshot warns when vLLM could not load the result: FP8_BLOCK on the bundled model's 64-wide experts", async () => {
  const warnings: string[] = [];
  await oneshot({
    scheme: "FP8_BLOCK",
    method: "rtn",
    numSamples: 1,
    maxSeqLength: 16,
    dataset: path.join(TEXT, "eval-json.jsonl"),
    output: path.join(tempDir("moecal-vllm-"), "out"),
    warn: (m) => void warnings.push(m),
  });
  assert.ok(
    warnings.some((w) =>
      /model\.layers\.1\.mlp\.experts: vLLM's FP8 block MoE needs the expert intermediate size \(64\).*more module/.test(w),
    ),
    warnings.join("\n"),
  );
});

/**
 * MiniMax-M2 beyond what every family shares (families.test.ts): the FP8 source as published
 * (fmt "float8_e4m3fn", modules_to_not_convert) against its own golden and through the CLI as a
 * new user would, vLLM's fused modules, and the config values the implementations do not agree on,
 * refused naming the field.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { ConfigError } from "../../src/errors.js";
import { SafetensorsFile, rawToInts } from "../../src/io/safetensors.js";
import { parseMiniMaxM2Config } from "../../src/models/minimax_m2/config.js";
import { miniMaxM2FusedGroups } from "../../src/models/minimax_m2/quant-defaults.js";
import { Linear } from "../../src/nn/layers.js";
import { openServed } from "../../src/pipeline/serving.js";
import { ROOT, assertClose, cliIn, evalKl, fixtureCopy, relErr, tempDir } from "../helpers.js";

const BF16 = path.join(ROOT, "test", "fixtures", "tiny-minimax_m2");
const FP8 = path.join(ROOT, "test", "fixtures", "tiny-minimax_m2-fp8");
const tmp = tempDir("moecal-minimax-");

test("FP8 source as published: forward within 1e-5 of its golden on the dequantized weights (6% away from the BF16 model's)", async () => {
  const fwd = SafetensorsFile.open(path.join(FP8, "golden", "forward.safetensors"));
  const ids = Int32Array.from(rawToInts(fwd.readRaw("input_ids"), "input_ids"));
  const out = await openServed(FP8).model.call({ ids: { ids, shape: [2, 48] }, outputHiddenStates: true });
  assertClose("logits", out.logits, fwd.readF32("logits"), 1e-5);
  for (const [i, h] of out.hiddenStates.entries()) assertClose(`hidden_states.${i}`, h, fwd.readF32(`hidden_states.${i}`), 1e-5);
  const bf16 = SafetensorsFile.open(path.join(BF16, "golden", "forward.safetensors")).readF32("logits");
  assert.ok(relErr(out.logits.data, bf16.data) > 0.03, "the scales are applied");
});

test("the q/k norms weigh every element of all heads ([nH * D], [nKV * D]); vLLM's fused modules: qkv_proj, one FusedMoE per layer (w1 + w3 one tensor per expert)", () => {
  const m = openServed(BF16, { load: false });
  const attn = m.model.getSubmodule("model.layers.0.self_attn");
  assert.deepEqual(attn.getSubmodule("q_norm").parameter("weight").shape, [128]);
  assert.deepEqual(attn.getSubmodule("k_norm").parameter("weight").shape, [64]);
  const linears = m.model
    .namedModules()
    .filter(([, l]) => l instanceof Linear)
    .map(([n]) => n);
  const groups = miniMaxM2FusedGroups(linears);
  assert.deepEqual(groups.find((g) => g.module === "model.layers.2.self_attn.qkv_proj")?.members, [
    "model.layers.2.self_attn.q_proj",
    "model.layers.2.self_attn.k_proj",
    "model.layers.2.self_attn.v_proj",
  ]);
  const experts = groups.find((g) => g.module === "model.layers.2.block_sparse_moe.experts");
  assert.equal(experts?.members.length, 24);
  assert.deepEqual(experts?.weights?.[0], ["model.layers.2.block_sparse_moe.experts.0.w1", "model.layers.2.block_sparse_moe.experts.0.w3"]);
  assert.ok(!groups.some((g) => g.members.some((n) => n.endsWith("o_proj") || n.endsWith(".gate"))));
});

test("config values the implementations do not agree on are refused naming the field, never guessed", () => {
  const raw = openServed(BF16, { load: false }).config.raw;
  const without = (k: string): Record<string, unknown> => Object.fromEntries(Object.entries(raw).filter(([f]) => f !== k));
  for (const [cfg, field] of [
    [{ ...raw, use_qk_norm: false }, "use_qk_norm"],
    [{ ...raw, scoring_func: "softmax" }, "scoring_func"],
    [{ ...raw, shared_intermediate_size: 64 }, "shared_intermediate_size"],
    [{ ...raw, attn_type_list: [0, 1, 1] }, "attn_type_list.0"],
    [{ ...raw, attention_bias: true }, "attention_bias"],
    [{ ...raw, qk_norm_type: "per_head" }, "qk_norm_type"],
    [without("head_dim"), "head_dim"],
    [without("rotary_dim"), "rotary_dim"],
  ] as const)
    assert.throws(
      () => parseMiniMaxM2Config(cfg, "config.json"),
      (e: Error) => e instanceof ConfigError && e.message.includes(`field "${field}"`),
      field,
    );
  // rotary dims from transformers 5's rope_parameters when rotary_dim is absent
  const r5 = parseMiniMaxM2Config({
    ...without("rotary_dim"),
    rope_parameters: { rope_type: "default", rope_theta: 5e6, partial_rotary_factor: 0.5 },
  });
  assert.equal(r5.rotaryDim, 16);
});

test("npx moecal oneshot --model <a copy of tiny-minimax_m2-fp8> --scheme NVFP4A16: inspect and eval --reference <the FP8 folder> accept it", () => {
  const copy = fixtureCopy(FP8, path.join(tmp, "fp8-copy"));
  const run = cliIn(tmp);
  run("oneshot", "--model", copy, "--scheme", "NVFP4A16", "--num-samples", "16", "--quiet");
  const out = path.join(tmp, "fp8-copy-NVFP4A16");
  assert.match(run("inspect", out), /no problems found/);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as {
    quantization_config: { quant_method: string; format: string };
  };
  assert.equal(cfg.quantization_config.quant_method, "compressed-tensors");
  const kl = evalKl(run, out, copy);
  assert.ok(kl > 0 && kl < 0.2, `kl ${kl}`);
});

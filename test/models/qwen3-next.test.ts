/**
 * Qwen3-Next and Qwen3.5-MoE beyond what every family shares (families.test.ts): Qwen3.5's
 * layout (text model under model.language_model., fused 3-D experts read as per-expert views and
 * written under per-expert names, the vision tower and MTP head copied byte for byte) tried as a
 * new user would, vLLM's fused modules, and config values refused naming the field.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ConfigError } from "../../src/errors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { parseQwen3NextConfig, parseQwen3_5MoeConfig } from "../../src/models/qwen3_next/config.js";
import { qwen3NextFusedGroups } from "../../src/models/qwen3_next/quant-defaults.js";
import { Linear } from "../../src/nn/layers.js";
import { openServed } from "../../src/pipeline/serving.js";
import { ROOT, assertClose, cliIn, evalKl, fixtureCopy, tempDir } from "../helpers.js";
import { Tensor } from "../../src/engine/tensor.js";
import type { Qwen3NextGatedDeltaNet } from "../../src/models/qwen3_next/gated-deltanet.js";

const NEXT = path.join(ROOT, "test", "fixtures", "tiny-qwen3_next");
const Q35 = path.join(ROOT, "test", "fixtures", "tiny-qwen3_5_moe");
const CLI = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = tempDir("moecal-qwen3-next-");

test("Qwen3.5's fused 3-D experts read as per-expert weights: expert e's gate_proj is rows [0, Im) of gate_up_proj[e], up_proj rows [Im, 2Im), down_proj down_proj[e]", () => {
  const raw = Checkpoint.open(Q35);
  const ck = openServed(Q35, { load: false }).checkpoint;
  const gu = raw.readF32("model.language_model.layers.1.mlp.experts.gate_up_proj");
  const down = raw.readF32("model.language_model.layers.1.mlp.experts.down_proj");
  const [E, twoIm, H] = gu.shape as [number, number, number];
  const Im = twoIm / 2;
  for (const e of [0, 5, E - 1]) {
    const at = (t: typeof gu, from: number, n: number): Float32Array => t.data.slice(from, from + n);
    assert.deepEqual(ck.readF32(`model.layers.1.mlp.experts.${e}.gate_proj.weight`).data, at(gu, e * twoIm * H, Im * H));
    assert.deepEqual(ck.readF32(`model.layers.1.mlp.experts.${e}.up_proj.weight`).data, at(gu, (e * twoIm + Im) * H, Im * H));
    assert.deepEqual(ck.readF32(`model.layers.1.mlp.experts.${e}.down_proj.weight`).data, at(down, e * H * Im, H * Im));
  }
  assert.ok(!ck.has("model.language_model.layers.1.mlp.experts.gate_up_proj") && !ck.has("model.layers.1.mlp.experts.gate_up_proj"));
  // the MTP head's fused experts stay as stored: it is copied, not read
  assert.ok(ck.has("mtp.layers.0.mlp.experts.gate_up_proj"));
});

test("npx moecal oneshot --model <a copy of tiny-qwen3_5_moe>: per-expert names under model.language_model., the vision tower and MTP head byte for byte; inspect and eval --reference accept it", () => {
  const copy = fixtureCopy(Q35, path.join(tmp, "q35"));
  const run = cliIn(tmp);
  run("oneshot", "--model", copy, "--num-samples", "16", "--quiet");
  const out = path.join(tmp, "q35-W4A16");
  assert.match(run("inspect", out), /no problems found/);
  const ck = Checkpoint.open(out);
  const input = Checkpoint.open(copy);
  assert.ok(ck.has("model.language_model.layers.1.mlp.experts.7.up_proj.weight_packed"));
  assert.ok(ck.has("model.language_model.layers.0.linear_attn.in_proj_qkv.weight_packed"));
  assert.ok(!ck.names().some((n) => n.startsWith("model.layers.") || /experts\.(gate_up|down)_proj$/.test(n.replace(/^mtp\..*/, ""))));
  const towers = input.names().filter((n) => n.startsWith("model.visual.") || n.startsWith("mtp."));
  assert.equal(towers.length, 21 + 19);
  for (const n of towers) assert.ok(Buffer.from(ck.readRaw(n).bytes).equals(Buffer.from(input.readRaw(n).bytes)), `${n} byte for byte`);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as {
    quantization_config: { ignore: string[] };
    text_config: unknown;
  };
  assert.ok(cfg.quantization_config.ignore.includes("model.language_model.layers.0.linear_attn.in_proj_b"));
  assert.ok(cfg.quantization_config.ignore.includes("model.visual.blocks.0.attn.qkv"));
  assert.ok(!cfg.quantization_config.ignore.some((n) => n.startsWith("model.layers.")));
  const kl = evalKl(run, out, copy);
  assert.ok(kl > 0 && kl < 0.2, `kl ${kl}`);
});

test("vLLM's fused modules: q/k/v; dense and shared-expert gate/up; a layer's experts; Qwen3.5's in_proj_qkv + in_proj_z (in_proj_b/a never quantized)", () => {
  for (const [dir, qkvz] of [
    [NEXT, false],
    [Q35, true],
  ] as const) {
    const m = openServed(dir, { load: false });
    const linears = m.model
      .namedModules()
      .filter(([, l]) => l instanceof Linear)
      .map(([n]) => n);
    const groups = qwen3NextFusedGroups(linears);
    const find = (module: string): string[] | undefined => groups.find((g) => g.module === module)?.members;
    assert.deepEqual(
      find("model.layers.3.self_attn.qkv_proj"),
      ["q_proj", "k_proj", "v_proj"].map((p) => `model.layers.3.self_attn.${p}`),
    );
    assert.deepEqual(
      find("model.layers.1.mlp.shared_expert.gate_up_proj"),
      ["gate_proj", "up_proj"].map((p) => `model.layers.1.mlp.shared_expert.${p}`),
    );
    assert.equal(find("model.layers.1.mlp.experts")?.length, 24);
    assert.deepEqual(
      find("model.layers.0.linear_attn.in_proj_qkvz"),
      qkvz ? ["model.layers.0.linear_attn.in_proj_qkv", "model.layers.0.linear_attn.in_proj_z"] : undefined,
    );
  }
});

test("config values read differently by transformers and vLLM, or inconsistent, are refused naming the field", () => {
  const next = openServed(NEXT, { load: false }).config.raw;
  for (const [cfg, field] of [
    [{ ...next, linear_num_value_heads: 3 }, "linear_num_value_heads"],
    [{ ...next, layer_types: ["linear_attention"] }, "layer_types"],
    [{ ...next, partial_rotary_factor: 0.01 }, "partial_rotary_factor"],
    [{ ...next, mlp_only_layers: [9] }, "mlp_only_layers"],
    [{ ...next, rope_scaling: { type: "yarn", factor: 4 } }, "rope_scaling"],
  ] as const)
    assert.throws(
      () => parseQwen3NextConfig(cfg, "config.json"),
      (e: Error) => e instanceof ConfigError && e.message.includes(`field "${field}"`),
      field,
    );
  const q35 = openServed(Q35, { load: false }).config.raw as { text_config: Record<string, unknown> };
  for (const [text, field] of [
    [{ attn_output_gate: false }, "text_config.attn_output_gate"],
    [{ rope_parameters: { rope_type: "yarn", rope_theta: 1e7 } }, "text_config.rope_parameters.rope_type"],
    [{ num_key_value_heads: 3 }, "text_config.num_key_value_heads"],
  ] as const)
    assert.throws(
      () => parseQwen3_5MoeConfig({ ...q35, text_config: { ...q35.text_config, ...text } }, "config.json"),
      (e: Error) => e instanceof ConfigError && e.message.includes(`field "${field}"`),
      field,
    );
  // Qwen3.5's router always renormalises (transformers has no switch for it)
  assert.equal(parseQwen3_5MoeConfig({ ...q35, text_config: { ...q35.text_config, norm_topk_prob: false } }).normTopkProb, true);
});

test("the chunked delta rule (chunks of 64, heads batched through the engine) equals the token-by-token recurrence (chunks of 1) over 150 tokens: 3 chunks, the state carried across", async () => {
  const m = openServed(NEXT);
  const gdn = m.model.getSubmodule("model.layers.0.linear_attn") as Qwen3NextGatedDeltaNet;
  const S = 150;
  const x = new Tensor(
    Float32Array.from({ length: 2 * S * 64 }, (_, i) => Math.sin(i * 0.61) * 0.9),
    [2, S, 64],
  );
  assert.equal(gdn.chunk, 64);
  const chunked = await gdn.call(x);
  gdn.chunk = 1;
  try {
    assertClose("linear_attn output", chunked, await gdn.call(x), 1e-5);
  } finally {
    gdn.chunk = 64;
  }
});

test("Qwen3-Next's dense layers (mlp_only_layers, decoder_sparse_step) carry a plain SwiGLU MLP of intermediate_size, which the family reports and the forward runs", async () => {
  const out = path.join(tmp, "dense");
  const r = spawnSync(process.execPath, [CLI, "random-model", "--family", "qwen3_next", "--set", "mlp_only_layers=[0]", "--output", out], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const m = openServed(out);
  assert.deepEqual(
    [0, 1, 2, 3].map((i) => m.family.isMoeLayer(m.config, i)),
    [false, true, true, true],
  );
  assert.deepEqual(m.model.getSubmodule("model.layers.0.mlp.down_proj").parameter("weight").shape, [64, 128]);
  const o = await m.model.call({ ids: { ids: Int32Array.from([256, 72, 105]), shape: [1, 3] } });
  assert.ok(o.logits.data.every(Number.isFinite));
});

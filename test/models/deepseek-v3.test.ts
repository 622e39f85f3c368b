/**
 * DeepSeek-V3 beyond what every family shares (families.test.ts): the FP8 block-scaled source
 * against its own golden, YaRN's numbers, both RoPE pairings, MLA without query compression
 * against a plain loop-by-loop reference of ../shared/spec/deepseek_v3.md, vLLM's fused modules,
 * config values refused, and FP8 sources of other families.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Tensor } from "../../src/engine/tensor.js";
import { bf16ToF32, f32ToBf16, fp8e4m3ToF32 } from "../../src/engine/dtype.js";
import { ConfigError, UsageError } from "../../src/errors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { SafetensorsFile, rawToInts } from "../../src/io/safetensors.js";
import { parseDeepseekV3Config } from "../../src/models/deepseek_v3/config.js";
import { DeepseekV3Attention, DeepseekV3ForCausalLM } from "../../src/models/deepseek_v3/modeling.js";
import { deepseekV3FusedGroups } from "../../src/models/deepseek_v3/quant-defaults.js";
import { Linear, type RMSNorm } from "../../src/nn/layers.js";
import { ropeFrequencies } from "../../src/nn/rope.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { plan } from "../../src/pipeline/plan.js";
import { openServed } from "../../src/pipeline/serving.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { ROOT, TEXT, assertClose, cliIn, evalKl, fixtureCopy, relErr, tempDir } from "../helpers.js";

const BF16 = path.join(ROOT, "test", "fixtures", "tiny-deepseek_v3");
const FP8 = path.join(ROOT, "test", "fixtures", "tiny-deepseek_v3-fp8");
const CLI = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = tempDir("moecal-deepseek-");
const ids = (f: SafetensorsFile): Int32Array => Int32Array.from(rawToInts(f.readRaw("input_ids"), "input_ids"));

test("FP8 block-scaled source: forward within 1e-5 of its golden on the dequantized weights (7% away from the BF16 model's)", async () => {
  const fwd = SafetensorsFile.open(path.join(FP8, "golden", "forward.safetensors"));
  const out = await openServed(FP8).model.call({ ids: { ids: ids(fwd), shape: [2, 48] }, outputHiddenStates: true });
  assertClose("logits", out.logits, fwd.readF32("logits"), 1e-5);
  for (const [i, h] of out.hiddenStates.entries()) assertClose(`hidden_states.${i}`, h, fwd.readF32(`hidden_states.${i}`), 1e-5);
  const bf16 = SafetensorsFile.open(path.join(BF16, "golden", "forward.safetensors")).readF32("logits");
  assert.ok(relErr(out.logits.data, bf16.data) > 0.03, "the scales are applied");
});

test("FP8 source: a weight reads as e4m3(q) x its block's scale_inv (float32), and as bytes in the model's torch_dtype; scales hidden", () => {
  const raw = SafetensorsFile.open(path.join(FP8, "model.safetensors"));
  const ck = openServed(FP8, { load: false }).checkpoint;
  const n = "model.layers.1.mlp.experts.2.down_proj.weight"; // [64, 32]: two row blocks of 32
  const q = raw.readRaw(n).bytes;
  const s = raw.readF32(n.replace(/weight$/, "weight_scale_inv")).data;
  const want = Float32Array.from(q, (b, i) => Math.fround(fp8e4m3ToF32(b) * (s[Math.floor(i / 32 / 32)] as number)));
  assert.deepEqual(ck.readF32(n).data, want);
  assert.deepEqual(ck.info(n).dtype, "BF16");
  assert.deepEqual(bf16ToF32(new Uint16Array(ck.readRaw(n).bytes.slice().buffer)), bf16ToF32(f32ToBf16(want)));
  assert.ok(!ck.names().some((x) => x.endsWith("weight_scale_inv")) && !ck.has(n.replace(/weight$/, "weight_scale_inv")));
});

test("YaRN (spec's fixture values): frequency 0 kept, 1 half-scaled, 2-3 divided by 4; softmax scale (dn + dr)^-0.5 x 1.2964", () => {
  const config = openServed(BF16, { load: false }).config;
  const { invFreq, attentionFactor } = ropeFrequencies(8, 1e4, parseDeepseekV3Config(config.raw).yarn);
  const base = [0, 1, 2, 3].map((j) => 1 / 1e4 ** ((2 * j) / 8));
  assertClose(
    "inv_freq",
    invFreq,
    [base[0] as number, (base[1] as number) * 0.625, (base[2] as number) / 4, (base[3] as number) / 4],
    1e-7,
  );
  assert.equal(attentionFactor, 1);
  const attn = new DeepseekV3Attention(parseDeepseekV3Config(config.raw));
  assert.ok(Math.abs(attn.softmaxScale / (16 ** -0.5 * (0.1 * Math.log(4) + 1) ** 2) - 1) < 1e-12);
  assert.ok(Math.abs(attn.softmaxScale * 4 - 1.2964) < 1e-4);
});

test("rope_interleave false (rotate-half) with the rope rows permuted from adjacent pairs gives the interleaved model's logits", async () => {
  const a = openServed(BF16);
  const cfg = parseDeepseekV3Config({ ...a.config.raw, rope_interleave: false });
  const b = new DeepseekV3ForCausalLM(cfg);
  const [dn, dr, dq, rkv] = [8, 8, 16, 16];
  const params = new Map(a.model.namedParameters());
  // rotate-half dim j holds adjacent-pair dim 2j, dim j + dr/2 holds 2j + 1
  const perm = (w: Tensor, rowOf: (r: number) => number): Tensor => {
    const cols = w.dim(1);
    const out = new Float32Array(w.size);
    for (let r = 0; r < w.dim(0); r++) out.set(w.data.subarray(rowOf(r) * cols, (rowOf(r) + 1) * cols), r * cols);
    return new Tensor(out, w.shape);
  };
  const ropeRow = (start: number) => (r: number) => {
    const i = r - start;
    if (i < 0 || i >= dr) return r;
    return start + (i < dr / 2 ? 2 * i : 2 * (i - dr / 2) + 1);
  };
  for (const [n, p] of b.namedParameters()) {
    const w = params.get(n)?.value as Tensor;
    if (n.endsWith("q_b_proj.weight")) p.value = perm(w, (r) => ropeRow(Math.floor(r / dq) * dq + dn)(r));
    else if (n.endsWith("kv_a_proj_with_mqa.weight")) p.value = perm(w, ropeRow(rkv));
    else p.value = w;
  }
  const x = { ids: Int32Array.from([256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]), shape: [1, 13] };
  const [la, lb] = [(await a.model.call({ ids: x })).logits, (await b.call({ ids: x })).logits];
  assertClose("logits", lb, la, 1e-6);
});

const at = (a: ArrayLike<number>, i: number): number => a[i] as number;

/** MLA without query compression, loop by loop from the spec (float64 sums). */
function naiveMla(attn: DeepseekV3Attention, x: Float32Array, S: number): Float64Array {
  const c = attn.config;
  const [H, nH, dn, dr, dv, rkv] = [c.hiddenSize, c.numAttentionHeads, c.qkNopeHeadDim, c.qkRopeHeadDim, c.vHeadDim, c.kvLoraRank];
  const dq = dn + dr;
  const W = (n: string): Float32Array => attn.child<Linear>(n).weight.data;
  const mm = (a: ArrayLike<number>, rows: number, k: number, w: Float32Array, n: number): Float64Array => {
    const y = new Float64Array(rows * n);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += (a[r * k + i] as number) * (w[j * k + i] as number);
        y[r * n + j] = s;
      }
    return y;
  };
  const q = mm(x, S, H, W("q_proj"), nH * dq);
  const ckv = mm(x, S, H, W("kv_a_proj_with_mqa"), rkv + dr);
  const lat = new Float64Array(S * rkv);
  const g = attn.child<RMSNorm>("kv_a_layernorm").param("weight").data;
  for (let s = 0; s < S; s++) {
    let ms = 0;
    for (let i = 0; i < rkv; i++) ms += (ckv[s * (rkv + dr) + i] as number) ** 2;
    const inv = 1 / Math.sqrt(ms / rkv + c.rmsNormEps);
    for (let i = 0; i < rkv; i++) lat[s * rkv + i] = (ckv[s * (rkv + dr) + i] as number) * inv * (g[i] as number);
  }
  const kv = mm(lat, S, rkv, W("kv_b_proj"), nH * (dn + dv));
  // the spec's YaRN for this preset (dr 8, theta 1e4, L0 64, f 4): ramp [0, .5, 1, 1]
  const inv = [1, 0.625, 0.25, 0.25].map((f, j) => (1 / 1e4 ** ((2 * j) / dr)) * f);
  const rope = (x: ArrayLike<number>, p: number): Float64Array => {
    const o = Float64Array.from(x);
    for (let j = 0; j < dr / 2; j++) {
      const [co, si] = [Math.cos(p * at(inv, j)), Math.sin(p * at(inv, j))];
      o[2 * j] = at(x, 2 * j) * co - at(x, 2 * j + 1) * si;
      o[2 * j + 1] = at(x, 2 * j + 1) * co + at(x, 2 * j) * si;
    }
    return o;
  };
  const scale = dq ** -0.5 * (0.1 * Math.log(4) + 1) ** 2;
  const ctx = new Float64Array(S * nH * dv);
  for (let h = 0; h < nH; h++)
    for (let i = 0; i < S; i++) {
      const qi = q.subarray((i * nH + h) * dq, (i * nH + h + 1) * dq);
      const qpe = rope(qi.subarray(dn), i);
      const sc = Array.from({ length: i + 1 }, (_, j) => {
        const kpe = rope(ckv.subarray(j * (rkv + dr) + rkv, (j + 1) * (rkv + dr)), j);
        let s = 0;
        for (let d = 0; d < dn; d++) s += at(qi, d) * at(kv, (j * nH + h) * (dn + dv) + d);
        for (let d = 0; d < dr; d++) s += at(qpe, d) * at(kpe, d);
        return s * scale;
      });
      const mx = Math.max(...sc);
      const e = sc.map((s) => Math.exp(s - mx));
      const z = e.reduce((u, w) => u + w, 0);
      for (let j = 0; j <= i; j++)
        for (let d = 0; d < dv; d++)
          ctx[(i * nH + h) * dv + d] = at(ctx, (i * nH + h) * dv + d) + (at(e, j) / z) * at(kv, (j * nH + h) * (dn + dv) + dn + d);
    }
  return mm(ctx, S, nH * dv, W("o_proj"), H);
}

test("q_lora_rank null (q_proj, as Moonlight and DeepSeek-V2-Lite): MLA equals a loop-by-loop reference of the spec within 1e-5; no fused_qkv_a_proj", async () => {
  const out = path.join(tmp, "no-q-lora");
  const r = spawnSync(process.execPath, [CLI, "random-model", "--family", "deepseek_v3", "--set", "q_lora_rank=null", "--output", out], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const m = openServed(out);
  const attn = m.model.getSubmodule("model.layers.1.self_attn") as DeepseekV3Attention;
  assert.ok(attn.hasChild("q_proj") && !attn.hasChild("q_a_proj"));
  const S = 9;
  const x = Float32Array.from({ length: S * 64 }, (_, i) => Math.sin(i * 0.37) * 0.8);
  const got = await attn.call(new Tensor(x, [1, S, 64]));
  assertClose("attention output", got, naiveMla(attn, x, S), 1e-5);
  const linears = m.model
    .namedModules()
    .filter(([, l]) => l instanceof Linear)
    .map(([n]) => n);
  assert.ok(!deepseekV3FusedGroups(linears).some((g) => g.module.endsWith("fused_qkv_a_proj")));
});

test("vLLM's fused modules: q_a_proj + kv_a_proj_with_mqa as fused_qkv_a_proj; a run splitting it is refused naming it", async () => {
  const m = openServed(BF16, { load: false });
  const linears = m.model
    .namedModules()
    .filter(([, l]) => l instanceof Linear)
    .map(([n]) => n);
  const groups = deepseekV3FusedGroups(linears);
  assert.deepEqual(groups.find((g) => g.module === "model.layers.1.self_attn.fused_qkv_a_proj")?.members, [
    "model.layers.1.self_attn.q_a_proj",
    "model.layers.1.self_attn.kv_a_proj_with_mqa",
  ]);
  assert.ok(groups.some((g) => g.module === "model.layers.0.mlp.gate_up_proj"));
  assert.ok(groups.some((g) => g.module === "model.layers.1.mlp.shared_experts.gate_up_proj"));
  assert.equal(groups.find((g) => g.module === "model.layers.2.mlp.experts")?.members.length, 24);
  await assert.rejects(
    oneshot({ model: BF16, method: "rtn", ignore: ["re:.*q_a_proj$"], output: path.join(tmp, "split"), warn: () => undefined }),
    (e: Error) =>
      e instanceof UsageError && /self_attn\.fused_qkv_a_proj: vLLM fuses q_a_proj, kv_a_proj_with_mqa into one module/.test(e.message),
  );
});

test("config values vLLM and transformers would read differently are refused naming the field", () => {
  const raw = openServed(BF16, { load: false }).config.raw;
  for (const [set, field] of [
    [{ scoring_func: "softmax" }, "scoring_func"],
    [{ topk_method: "greedy" }, "topk_method"],
    [{ attention_bias: true }, "attention_bias"],
    [{ rope_scaling: { type: "linear", factor: 2 } }, "rope_scaling.rope_type"],
    [{ qk_rope_head_dim: 7 }, "qk_rope_head_dim"],
    [{ n_group: 3 }, "n_group"],
  ] as const)
    assert.throws(
      () => parseDeepseekV3Config({ ...raw, ...set }, "config.json"),
      (e: Error) => e instanceof ConfigError && e.message.includes(`field "${field}"`),
      field,
    );
  assert.equal(parseDeepseekV3Config({ ...raw, model_type: "kimi_k2" }).modelType, "kimi_k2");
});

test("FP8 source through the CLI as a new user would: oneshot W4A16 writes a plain compressed-tensors checkpoint (MTP layer in BF16 and in ignore, no scale_inv) that inspect, eval --reference <the FP8 folder>, coverage, forward and plan accept", () => {
  const copy = fixtureCopy(FP8, path.join(tmp, "fp8-copy"));
  const run = cliIn(tmp);
  run("oneshot", "--model", copy, "--scheme", "W4A16", "--group-size", "16", "--num-samples", "16", "--quiet");
  const out = path.join(tmp, "fp8-copy-W4A16");
  assert.match(run("inspect", out), /no problems found/);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as {
    quantization_config: { quant_method: string; ignore: string[] };
  };
  assert.equal(cfg.quantization_config.quant_method, "compressed-tensors");
  assert.ok(cfg.quantization_config.ignore.includes("model.layers.3.self_attn.q_b_proj"));
  const ck = Checkpoint.open(out);
  assert.ok(!ck.names().some((n) => n.endsWith("weight_scale_inv")));
  const src = openServed(copy, { load: false }).checkpoint;
  for (const n of ["model.layers.3.self_attn.q_b_proj.weight", "model.layers.3.mlp.experts.5.up_proj.weight"]) {
    assert.equal(ck.info(n).dtype, "BF16");
    assert.deepEqual(ck.readRaw(n).bytes, new Uint8Array(f32ToBf16(src.readF32(n).data).buffer), n);
  }
  const kl = evalKl(run, out, copy);
  assert.ok(kl > 0 && kl < 0.05, `kl ${kl}`);
  run("coverage", "--model", copy, "--dataset", path.join(TEXT, "eval-json.jsonl"), "--num-samples", "2", "--json", "--quiet");
  run(
    "forward",
    "--model",
    copy,
    "--input-ids",
    path.join(FP8, "golden", "forward.safetensors"),
    "--output",
    path.join(tmp, "fwd.safetensors"),
  );
  const fwd = SafetensorsFile.open(path.join(tmp, "fwd.safetensors"));
  assertClose(
    "forward CLI logits",
    fwd.readF32("logits"),
    SafetensorsFile.open(path.join(FP8, "golden", "forward.safetensors")).readF32("logits"),
    1e-5,
  );
});

test("plan on an FP8 source: the output bytes the run writes, exactly (unquantized copies counted in BF16)", async () => {
  const out = path.join(tmp, "fp8-plan-run");
  const opts = { model: FP8, scheme: "W8A16", numSamples: 4, maxSeqLength: 32 };
  await oneshot({ ...opts, output: out, warn: () => undefined });
  const p = await plan(opts, { gemmGflops: 100 });
  const index = JSON.parse(fs.readFileSync(path.join(out, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number } };
  assert.equal(p.disk.output, index.metadata.total_size);
});

for (const family of ["qwen3_moe", "glm4_moe"])
  test(`FP8 block source of another family (${family}, random-model --fp8-block 32): read dequantized, quantized, inspect clean`, async () => {
    const m = path.join(tmp, `${family}-fp8`);
    const r = spawnSync(process.execPath, [CLI, "random-model", "--family", family, "--fp8-block", "32", "--output", m], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    const raw = Checkpoint.open(m);
    const n = "model.layers.1.mlp.experts.0.down_proj.weight";
    assert.equal(raw.info(n).dtype, "F8_E4M3");
    const loaded = openServed(m);
    const q = raw.readRaw(n).bytes;
    const s = raw.readF32(n.replace(/weight$/, "weight_scale_inv")).data;
    const cols = loaded.source.shapeOf(n)[1] as number;
    const want = Float32Array.from(q, (b, i) =>
      Math.fround(
        fp8e4m3ToF32(b) * (s[Math.floor(Math.floor(i / cols) / 32) * Math.ceil(cols / 32) + Math.floor((i % cols) / 32)] as number),
      ),
    );
    assert.deepEqual(loaded.source.readF32(n).data, want);
    const out = path.join(tmp, `${family}-fp8-out`);
    await oneshot({ model: m, scheme: "W4A16", numSamples: 4, maxSeqLength: 16, output: out, warn: () => undefined });
    assert.deepEqual(inspectCheckpoint(out).problems, []);
  });

test("kimi_k2 (Moonshot's model_type for the same architecture): random-model --family kimi_k2 writes a checkpoint moecal loads, runs and quantizes data-free", async () => {
  const out = path.join(tmp, "kimi");
  const r = spawnSync(process.execPath, [CLI, "random-model", "--family", "kimi_k2", "--output", out], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const m = openServed(out);
  assert.equal(m.config.modelType, "kimi_k2");
  assert.ok((await m.model.call({ ids: { ids: Int32Array.from([256, 75, 105]), shape: [1, 3] } })).logits.data.every(Number.isFinite));
  await oneshot({ model: out, scheme: "W8A16", method: "rtn", output: path.join(tmp, "kimi-w8"), warn: () => undefined });
  assert.deepEqual(inspectCheckpoint(path.join(tmp, "kimi-w8")).problems, []);
});

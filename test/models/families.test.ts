/**
 * The Hugging Face MoE families (Qwen3-MoE, Mixtral, GLM-4.5, DeepSeek-V3, MiniMax-M2) against the independent PyTorch references of
 * test/fixtures/tiny-<family>/golden (made from the architecture specs): forward pass, the MoE
 * block of layer 1, its calibration module in both modes and on both paths, and the whole
 * pipeline on a copy of each checkpoint.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { CalibrationQwen3MoeSparseMoeBlock } from "../../src/calibration/qwen3-moe.js";
import { CalibrationMixtralSparseMoeBlock } from "../../src/calibration/mixtral.js";
import type { CalibrationOptions } from "../../src/calibration/module.js";
import { Linear } from "../../src/nn/layers.js";
import type { AnyModule } from "../../src/nn/module.js";
import type { ExpertModule } from "../../src/nn/softmax-moe.js";
import type { Module, ModuleList } from "../../src/nn/module.js";
import { Tensor } from "../../src/engine/tensor.js";
import { CalibrationGlm4MoeMoE } from "../../src/calibration/glm4-moe.js";
import { CalibrationDeepseekV3MoE } from "../../src/calibration/deepseek-v3.js";
import { CalibrationMiniMaxM2SparseMoeBlock } from "../../src/calibration/minimax-m2.js";
import type { MiniMaxM2BlockBase } from "../../src/models/minimax_m2/modeling.js";
import type { Glm4MoeTopkRouter } from "../../src/models/glm4_moe/modeling.js";
import { attachHessianObservers } from "../../src/calibration/observers.js";
import { SafetensorsFile, rawToInts } from "../../src/io/safetensors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { asMoeBlock, softmaxTopK } from "../../src/nn/moe.js";
import { matchesAny } from "../../src/quantization/scheme.js";
import { storedName } from "../../src/models/stored-layers.js";
import { CalibrationQwen3NextSparseMoeBlock } from "../../src/calibration/qwen3-next.js";
import { evaluate } from "../../src/pipeline/eval.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { plan } from "../../src/pipeline/plan.js";
import { openServed } from "../../src/pipeline/serving.js";
import { ROOT, TEXT, assertClose, assertIntsEqual, fixtureCopy, relErr, tempDir } from "../helpers.js";
import { SCHEME_NAMES } from "../../src/quantization/scheme.js";

interface FamilyCase {
  modelType: string;
  block: string;
  calibration: (b: AnyModule, o: CalibrationOptions) => AnyModule;
  /** on-disk names of the gate-side, up and down-side expert Linears */
  gate: string;
  up: string;
  down: string;
  /** the block's routing of x [T, H] */
  route: (moe: RoutedBlock, x: Tensor) => Promise<{ selectedExperts: Int32Array; topScores: Tensor }>;
  routers: string[];
  /** the Linear layers of the multi-token-prediction layers, also named in ignore */
  mtp?: string[];
  /** an attention Linear of layer 1 every scheme quantizes (default self_attn.q_proj) */
  attention?: string;
  /** Linear layers the family's default ignore names besides the routers and lm_head */
  alsoIgnored?: string[];
  /** Linear layers a scheme's fixed group does not fit, left unquantized for it */
  unfit?: Partial<Record<string, string>>;
}

/** What the tests reach into: the router `gate` and the `experts` (every family here names them so). */
type RoutedBlock = Module<Tensor, Tensor> & { gate: Linear; experts: ModuleList<ExpertModule> };

const softmaxRoute =
  (renormalize: boolean) =>
  async (moe: RoutedBlock, x: Tensor): Promise<{ selectedExperts: Int32Array; topScores: Tensor }> =>
    softmaxTopK(await moe.gate.call(x), 2, renormalize);

const CASES: FamilyCase[] = [
  {
    modelType: "qwen3_moe",
    block: "mlp",
    calibration: (b, o) => new CalibrationQwen3MoeSparseMoeBlock(b, o),
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    route: softmaxRoute(true),
    routers: ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate", "model.layers.2.mlp.gate"],
  },
  {
    modelType: "mixtral",
    block: "block_sparse_moe",
    calibration: (b, o) => new CalibrationMixtralSparseMoeBlock(b, o),
    gate: "w1",
    up: "w3",
    down: "w2",
    route: softmaxRoute(true),
    routers: ["model.layers.0.block_sparse_moe.gate", "model.layers.1.block_sparse_moe.gate", "model.layers.2.block_sparse_moe.gate"],
  },
  {
    modelType: "glm4_moe",
    block: "mlp",
    calibration: (b, o) => new CalibrationGlm4MoeMoE(b, o),
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    route: async (moe, x) => (moe.gate as Glm4MoeTopkRouter).route(await moe.gate.call(x)),
    routers: ["model.layers.1.mlp.gate", "model.layers.2.mlp.gate"],
  },
  {
    modelType: "deepseek_v3",
    block: "mlp",
    calibration: (b, o) => new CalibrationDeepseekV3MoE(b, o),
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    route: async (moe, x) => (moe.gate as Glm4MoeTopkRouter).route(await moe.gate.call(x)),
    routers: ["model.layers.1.mlp.gate", "model.layers.2.mlp.gate"],
    attention: "self_attn.kv_a_proj_with_mqa",
    // kv_b_proj's 16 inputs (kv_lora_rank) do not take MXFP4's groups of 32
    unfit: { MXFP4A16: "re:.*kv_b_proj$" },
    // layer 3 (the spec's list): a decoder layer's Linears, eh_proj and shared_head.head
    mtp: [
      "eh_proj",
      "shared_head.head",
      "mlp.gate",
      ...["gate_proj", "up_proj", "down_proj"].flatMap((p) => [
        ...Array.from({ length: 8 }, (_, e) => `mlp.experts.${e}.${p}`),
        `mlp.shared_experts.${p}`,
      ]),
      ...["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"].map((p) => `self_attn.${p}`),
    ]
      .map((n) => `model.layers.3.${n}`)
      .sort(),
  },
  {
    modelType: "minimax_m2",
    block: "block_sparse_moe",
    calibration: (b, o) => new CalibrationMiniMaxM2SparseMoeBlock(b, o),
    gate: "w1",
    up: "w3",
    down: "w2",
    route: async (moe, x) => (moe as unknown as MiniMaxM2BlockBase).route(await moe.gate.call(x)),
    routers: ["model.layers.0.block_sparse_moe.gate", "model.layers.1.block_sparse_moe.gate", "model.layers.2.block_sparse_moe.gate"],
  },
  ...(["qwen3_next", "qwen3_5_moe"] as const).map(
    (modelType): FamilyCase => ({
      modelType,
      block: "mlp",
      calibration: (b, o) => new CalibrationQwen3NextSparseMoeBlock(b, o),
      gate: "gate_proj",
      up: "up_proj",
      down: "down_proj",
      route: softmaxRoute(true),
      routers: [0, 1, 2, 3].map((i) => `model.layers.${i}.mlp.gate`),
      attention: modelType === "qwen3_next" ? "linear_attn.in_proj_qkvz" : "linear_attn.in_proj_qkv",
      alsoIgnored: [0, 1, 2, 3].flatMap((i) => [
        `model.layers.${i}.mlp.shared_expert_gate`,
        ...(i === 3 ? [] : modelType === "qwen3_next" ? ["in_proj_ba"] : ["in_proj_b", "in_proj_a"]).map(
          (p) => `model.layers.${i}.linear_attn.${p}`,
        ),
      ]),
      // the MTP head's Linear layers (Qwen3.5's fused 3-D MTP experts are not .weight tensors) and the vision tower's
      mtp: [
        "mtp.fc",
        "mtp.layers.0.mlp.gate",
        "mtp.layers.0.mlp.shared_expert_gate",
        ...["gate_proj", "up_proj", "down_proj"].map((p) => `mtp.layers.0.mlp.shared_expert.${p}`),
        ...["q_proj", "k_proj", "v_proj", "o_proj"].map((p) => `mtp.layers.0.self_attn.${p}`),
        ...(modelType === "qwen3_next"
          ? ["gate_proj", "up_proj", "down_proj"].flatMap((p) => Array.from({ length: 8 }, (_, e) => `mtp.layers.0.mlp.experts.${e}.${p}`))
          : [
              ...["blocks.0.attn.proj", "blocks.0.attn.qkv", "blocks.0.mlp.linear_fc1", "blocks.0.mlp.linear_fc2"],
              ...["merger.linear_fc1", "merger.linear_fc2"],
            ].map((n) => `model.visual.${n}`)),
      ].sort(),
      // the shared expert's 48 inputs do not take MXFP4's groups of 32
      unfit: { MXFP4A16: "re:.*shared_expert\\.down_proj$" },
    }),
  ),
];

/** A model's Linear layers, in module order. */
function linearsOf(m: AnyModule): string[] {
  return m
    .namedModules()
    .filter(([, x]) => x instanceof Linear)
    .map(([n]) => n);
}

for (const fc of CASES) {
  const DIR = path.join(ROOT, "test", "fixtures", `tiny-${fc.modelType}`);
  const fwd = SafetensorsFile.open(path.join(DIR, "golden", "forward.safetensors"));
  const g = SafetensorsFile.open(path.join(DIR, "golden", "moe-layer1.safetensors"));
  const ints = (f: SafetensorsFile, n: string): number[] => rawToInts(f.readRaw(n), n);
  const loaded = openServed(DIR);
  const stored = (n: string): string => storedName(n, loaded.config);
  const model = loaded.model;
  const moe = model.getSubmodule(`model.layers.1.${fc.block}`) as RoutedBlock;
  const x = g.readF32("x");
  const tmp = tempDir(`moecal-${fc.modelType}-`);

  test(`${fc.modelType} forward: logits and every layer's hidden states within 1e-5 of the reference`, async () => {
    const out = await model.call({ ids: { ids: Int32Array.from(ints(fwd, "input_ids")), shape: [2, 48] }, outputHiddenStates: true });
    assertClose("logits", out.logits, fwd.readF32("logits"), 1e-5);
    for (const [i, h] of out.hiddenStates.entries()) assertClose(`hidden_states.${i}`, h, fwd.readF32(`hidden_states.${i}`), 1e-5);
  });

  test(`${fc.modelType} layer 1: routing exact, block output within 1e-6`, async () => {
    const routing = await fc.route(moe, x.reshape([96, 64]));
    assertIntsEqual("selected_experts", routing.selectedExperts, ints(g, "selected_experts"));
    assertClose("top_scores", routing.topScores, g.readF32("top_scores"), 1e-6);
    const counts = new Array<number>(8).fill(0);
    for (const e of routing.selectedExperts) counts[e] = (counts[e] as number) + 1;
    assertIntsEqual("routed_counts", counts, ints(g, "routed_counts"));
    assertClose("out_original", await moe.call(x), g.readF32("out_original"), 1e-6);
  });

  for (const [mode, fastPath] of [
    ["all", true],
    ["all", false],
    ["routed", false],
  ] as const) {
    test(`${fc.modelType} calibration module (${mode}${mode === "all" ? (fastPath ? ", fast path" : ", per-expert path") : ""}): output, every expert Linear's Hessian and row count match the reference`, async () => {
      const calib = fc.calibration(moe, { calibrateAllExperts: mode === "all", fastPath }) as RoutedBlock;
      assert.equal(calib.gate, moe.gate);
      assert.equal(calib.experts, moe.experts);
      const obs = attachHessianObservers(calib, (name) => new RegExp(`^experts\\.\\d+\\.(${fc.gate}|${fc.up}|${fc.down})$`).test(name));
      try {
        assertClose(`out_calib_${mode}`, await calib.call(x), g.readF32(`out_calib_${mode}`), 1e-6);
        for (let e = 0; e < 8; e++) {
          for (const p of [fc.gate, fc.down]) {
            const s = obs.stats.get(`experts.${e}.${p}`);
            assert.ok(s, `experts.${e}.${p} observed`);
            assert.equal(s.rows, ints(g, `${mode}.experts.${e}.${p}.tokens`)[0], `${mode}.experts.${e}.${p}.tokens`);
            if (s.rows > 0) assertClose(`${mode}.experts.${e}.${p}.H`, s.H, g.readF32(`${mode}.experts.${e}.${p}.H`), 1e-5);
          }
          assert.deepEqual(obs.stats.get(`experts.${e}.${fc.up}`)?.H, obs.stats.get(`experts.${e}.${fc.gate}`)?.H, "up sees gate's rows");
        }
      } finally {
        obs.remove();
      }
    });
  }

  test(`${fc.modelType} default ignore: every router gate and lm_head, nothing else`, () => {
    const ignore = loaded.family.defaultIgnore;
    assert.deepEqual(
      linearsOf(model)
        .filter((n) => matchesAny(n, ignore))
        .sort(),
      [...fc.routers, "lm_head", ...(fc.alsoIgnored ?? [])].sort(),
    );
  });

  test(`${fc.modelType} end to end: oneshot with every scheme, GPTQ and RTN, writes the published names with the router gates ignored; inspect is clean; the loader reads every weight back close to the original; eval runs`, async () => {
    const original = openServed(DIR);
    for (const scheme of SCHEME_NAMES) {
      for (const method of ["gptq", "rtn"] as const) {
        const out = path.join(tmp, `${method}-${scheme}`);
        const { report } = await oneshot({
          model: DIR,
          method,
          scheme,
          numSamples: 4,
          maxSeqLength: 32,
          output: out,
          warn: () => undefined,
          ...(fc.unfit?.[scheme] ? { ignore: [fc.unfit[scheme] as string] } : {}),
        });
        assert.deepEqual(report.fallbacks, [], `${scheme} ${method}`);
        const unfit = fc.unfit?.[scheme];
        const ignored = linearsOf(original.model)
          .filter((n) => matchesAny(n, [...original.family.defaultIgnore, ...(unfit ? [unfit] : [])]))
          .map((n) => stored(n));
        const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as {
          model_type: string;
          quantization_config: { ignore: string[] };
        };
        assert.equal(cfg.model_type, fc.modelType);
        assert.deepEqual(cfg.quantization_config.ignore, [...ignored, ...(fc.mtp ?? [])]);
        assert.deepEqual(inspectCheckpoint(out).problems, [], `${scheme} ${method}`);
        // loader round trip: every dequantized expert weight within the scheme's error of the original
        const back = openServed(out, { load: false });
        for (const e of [0, 5]) {
          const n = `model.layers.1.${fc.block}.experts.${e}.${fc.down}.weight`;
          const err = relErr(back.source.readF32(n).data, original.source.readF32(n).data);
          assert.ok(
            err > 0 && err < (scheme.startsWith("W4") || scheme.includes("FP4") ? 0.25 : 0.08),
            `${scheme} ${method} ${n}: relative error ${err}`,
          );
        }
      }
    }
    const r = await evaluate({
      model: path.join(tmp, "gptq-W4A16"),
      reference: DIR,
      dataset: path.join(TEXT, "eval-prose.jsonl"),
      numSamples: 2,
      maxSeqLength: 32,
    });
    assert.ok(Number.isFinite(r.nll) && r.kl !== null && r.kl >= 0 && r.kl < 0.5, `nll ${r.nll}, kl ${r.kl}`);
    const ck = openServed(path.join(tmp, "gptq-W4A16"), { load: false }).checkpoint;
    for (const n of [
      `model.layers.1.${fc.block}.experts.3.${fc.gate}.weight_packed`,
      `model.layers.1.${fc.attention ?? "self_attn.q_proj"}.weight_scale`,
      `${fc.routers[1]}.weight`,
    ]) {
      assert.ok(ck.has(n), n);
    }
    const router = `${fc.routers[1]}.weight`;
    assert.equal(ck.info(router).dtype, loaded.checkpoint.info(router).dtype, "the router gate is written unquantized, in its own dtype");
    // every input tensor the output keeps (router gates, GLM's F32 correction bias, norms, embeddings, towers stored beside), byte for byte
    const input = Checkpoint.open(DIR);
    const output = Checkpoint.open(path.join(tmp, "gptq-W4A16"));
    let kept = 0;
    for (const n of input.names()) {
      if (!output.has(n)) continue;
      kept++;
      assert.ok(Buffer.from(output.readRaw(n).bytes).equals(Buffer.from(input.readRaw(n).bytes)), `${n} unchanged`);
      assert.equal(output.info(n).dtype, input.info(n).dtype, `${n} dtype`);
    }
    assert.ok(kept > fc.routers.length, `${kept} tensors kept`);
  });

  test(`${fc.modelType} plan: the bytes the end-to-end run wrote, exactly`, async () => {
    const p = await plan({ model: DIR, numSamples: 4, maxSeqLength: 32 }, { gemmGflops: 100 });
    const index = JSON.parse(fs.readFileSync(path.join(tmp, "gptq-W4A16", "model.safetensors.index.json"), "utf8")) as {
      metadata: { total_size: number };
    };
    assert.equal(p.disk.output, index.metadata.total_size);
    assert.ok(p.layers.some((l) => l.moe) && p.layers.every((l) => l.flops.calibrate > 0 && l.peak_memory_bytes > 0));
  });

  test(`npx moecal oneshot --model <a tiny-${fc.modelType} copy> works with no other flag`, () => {
    const copy = fixtureCopy(DIR, path.join(tmp, `tiny-${fc.modelType}`));
    const r = spawnSync(
      process.execPath,
      [path.join(ROOT, "dist", "src", "cli", "main.js"), "oneshot", "--model", copy, "--num-samples", "8", "--quiet"],
      { encoding: "utf8", cwd: tmp },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.ok(fs.existsSync(path.join(tmp, `tiny-${fc.modelType}-W4A16`, "moecal.json")));
    const cov = spawnSync(
      process.execPath,
      [
        path.join(ROOT, "dist", "src", "cli", "main.js"),
        "coverage",
        "--model",
        copy,
        "--dataset",
        path.join(TEXT, "eval-json.jsonl"),
        "--num-samples",
        "2",
        "--json",
      ],
      { encoding: "utf8" },
    );
    assert.equal(cov.status, 0, cov.stderr);
    const layers = (JSON.parse(cov.stdout) as { layers: Record<string, { routed: number[] }> }).layers;
    assert.deepEqual(
      Object.keys(layers),
      fc.routers.map((r) => r.split(".")[2]),
      "one entry per MoE layer",
    );
  });

  test(`random-model --like tiny-${fc.modelType}: a loadable random checkpoint of the family, any depth`, async () => {
    const out = path.join(tmp, "random");
    const r = spawnSync(
      process.execPath,
      [path.join(ROOT, "dist", "src", "cli", "main.js"), "random-model", "--like", DIR, "--layers", "2", "--output", out],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    const m = openServed(out);
    assert.equal(m.config.modelType, fc.modelType);
    assert.equal(m.config.numHiddenLayers, 2);
    const o = await m.model.call({ ids: { ids: Int32Array.from([256, 72, 105]), shape: [1, 3] } });
    assert.ok(o.logits.data.every(Number.isFinite));
  });

  test(`${fc.modelType}: the family says which layers are MoE, and random-model --family writes its tiny preset`, async () => {
    for (const [i, layer] of model.model.layers.items().entries()) {
      const hasMoe = layer.namedModules().some(([, m]) => asMoeBlock(m) !== null);
      assert.equal(loaded.family.isMoeLayer(loaded.config, i), hasMoe, `layer ${i}`);
    }
    const out = path.join(tmp, "preset");
    const r = spawnSync(
      process.execPath,
      [path.join(ROOT, "dist", "src", "cli", "main.js"), "random-model", "--family", fc.modelType, "--output", out],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    const m = openServed(out);
    assert.equal(m.config.modelType, fc.modelType);
    assert.ok((await m.model.call({ ids: { ids: Int32Array.from([256, 65]), shape: [1, 2] } })).logits.data.every(Number.isFinite));
  });

  if (fc.modelType === "glm4_moe") {
    test("glm4_moe with attention_bias (as published): q/k/v biases load, change the output, and pass through oneshot unquantized", async () => {
      const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
      const biased = path.join(tmp, "biased");
      const r = spawnSync(
        process.execPath,
        [cli, "random-model", "--family", "glm4_moe", "--set", "attention_bias=true", "--output", biased],
        { encoding: "utf8" },
      );
      assert.equal(r.status, 0, r.stderr);
      const m = openServed(biased);
      const q = m.model.getSubmodule("model.layers.0.self_attn.q_proj") as Linear;
      assert.ok(q.hasBias && m.mapping.sources.has("model.layers.0.self_attn.q_proj.bias"));
      const ids = { ids: Int32Array.from([256, 72, 105, 33]), shape: [1, 4] };
      const withBias = await m.model.call({ ids });
      q.parameter("bias").value = new Tensor(new Float32Array(q.outFeatures), [q.outFeatures]);
      const without = await m.model.call({ ids });
      assert.ok(relErr(withBias.logits.data, without.logits.data) > 1e-4, "the bias is applied");
      const out = path.join(tmp, "biased-q");
      await oneshot({ model: biased, method: "rtn", numSamples: 2, maxSeqLength: 16, output: out, warn: () => undefined });
      assert.deepEqual(inspectCheckpoint(out).problems, []);
      const ck = Checkpoint.open(out);
      assert.ok(ck.has("model.layers.0.self_attn.q_proj.bias") && ck.has("model.layers.0.self_attn.q_proj.weight_packed"));
    });
  }
}

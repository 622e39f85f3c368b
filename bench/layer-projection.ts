/**
 * The plan of one DeepSeek-V3 and one Kimi-K2 MoE layer, as published (FP8 blocks of 128 x 128),
 * without their weights: a checkpoint whose safetensors header lists every tensor of a 1-layer model
 * of the real shapes and whose data is a sparse hole (no disk used), planned by `plan()` itself. The
 * plan reads configs and headers only, so this is the plan a user of the real model gets for that
 * layer: peak memory run whole and in the expert groups that fit a memory limit.
 */
import fs from "node:fs";
import path from "node:path";
import { BUNDLED_MODEL } from "../src/paths.js";
import { DTYPE_BYTES, type DType } from "../src/io/safetensors.js";
import { familyFor } from "../src/models/registry.js";
import { matchesAny } from "../src/quantization/scheme.js";
import { plan } from "../src/pipeline/plan.js";
import type { LayerPlan } from "../src/pipeline/plan-types.js";

/** DeepSeek-V3's config.json fields that shape a layer (deepseek-ai/DeepSeek-V3), one MoE layer. */
export const DEEPSEEK_V3: Record<string, unknown> = {
  architectures: ["DeepseekV3ForCausalLM"],
  model_type: "deepseek_v3",
  vocab_size: 129280,
  hidden_size: 7168,
  intermediate_size: 18432,
  moe_intermediate_size: 2048,
  num_hidden_layers: 1,
  first_k_dense_replace: 0,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  n_shared_experts: 1,
  n_routed_experts: 256,
  num_experts_per_tok: 8,
  n_group: 8,
  topk_group: 4,
  routed_scaling_factor: 2.5,
  kv_lora_rank: 512,
  q_lora_rank: 1536,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  qk_nope_head_dim: 128,
  topk_method: "noaux_tc",
  scoring_func: "sigmoid",
  norm_topk_prob: true,
  moe_layer_freq: 1,
  hidden_act: "silu",
  max_position_embeddings: 163840,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: false,
  bos_token_id: 0,
  eos_token_id: 1,
  torch_dtype: "bfloat16",
  quantization_config: { quant_method: "fp8", fmt: "e4m3", activation_scheme: "dynamic", weight_block_size: [128, 128] },
};

/** Kimi-K2 (moonshotai/Kimi-K2-Instruct): DeepSeek-V3's architecture with 384 experts and 64 heads. */
const KIMI_K2: Record<string, unknown> = {
  ...DEEPSEEK_V3,
  vocab_size: 163840,
  n_routed_experts: 384,
  num_attention_heads: 64,
  num_key_value_heads: 64,
  n_group: 1,
  topk_group: 1,
  routed_scaling_factor: 2.827,
};

/**
 * A checkpoint of `config`'s shapes in `dir`: FP8 blocks and their float32 scales for the layers'
 * Linears when the config says so (quantization_config), BF16 elsewhere; data a sparse hole.
 */
export function headerOnly(dir: string, config: Record<string, unknown>): void {
  const fp8 = config.quantization_config !== undefined;
  fs.mkdirSync(dir, { recursive: true });
  const family = familyFor(config, "projection config");
  const model = family.build(family.parseConfig(config, "projection config"));
  // the FP8 scales first, written (the checkpoint reader checks them: 1 each); every other tensor after them, a hole
  const tensors: [string, DType, number[]][] = [];
  const scales: [string, DType, number[]][] = [];
  for (const [name, p] of model.namedParameters()) {
    const module = name.slice(0, -".weight".length);
    if (fp8 && name.startsWith("model.layers.") && p.shape.length === 2 && !matchesAny(module, family.defaultIgnore)) {
      tensors.push([name, "F8_E4M3", p.shape]);
      scales.push([`${module}.weight_scale_inv`, "F32", p.shape.map((d) => Math.ceil(d / 128))]);
    } else tensors.push([name, name.endsWith("correction_bias") ? "F32" : "BF16", p.shape]);
  }
  const header: Record<string, { dtype: DType; shape: number[]; data_offsets: [number, number] }> = {};
  let offset = 0;
  for (const [name, dtype, shape] of [...scales, ...tensors]) {
    const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const scaleBytes = scales.reduce((a, [, , shape]) => a + 4 * shape.reduce((x, y) => x * y, 1), 0);
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const file = path.join(dir, "model.safetensors");
  const ones = Buffer.from(new Float32Array(scaleBytes / 4).fill(1).buffer);
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), ones]));
  fs.truncateSync(file, 8 + Buffer.byteLength(json) + offset);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(BUNDLED_MODEL, f), path.join(dir, f));
}

export interface LayerProjection {
  model: string;
  experts: number;
  tokens: number;
  /** GiB */
  whole: { peak: number; parameters: number; hessians: number };
  grouped: { limit: number; size: number; groups: number; peak: number }[];
  /** router-aware statistics keep each expert's routed rows apart: every gate/up projection its own Hessian */
  router_aware_whole_peak: number;
}

const GiB = 1024 ** 3;

/** Project a DeepSeek-V3 and a Kimi-K2 layer for `samples` x `seq` tokens of `dataset`, whole and under each limit (GiB). */
export async function projectLayers(
  work: string,
  dataset: string,
  samples: number,
  seq: number,
  limits: number[],
): Promise<LayerProjection[]> {
  const out: LayerProjection[] = [];
  for (const [name, config] of [
    ["DeepSeek-V3", DEEPSEEK_V3],
    ["Kimi-K2", KIMI_K2],
  ] as const) {
    const dir = path.join(work, name);
    headerOnly(dir, config);
    const base = { model: dir, dataset, numSamples: samples, maxSeqLength: seq, workers: 4 };
    const layer = async (o: object): Promise<[LayerPlan, number]> => {
      const p = await plan({ ...base, ...o });
      return [p.layers[0] as LayerPlan, p.tokens];
    };
    const [whole, tokens] = await layer({ maxMemory: 2 ** 50 });
    const [aware] = await layer({ maxMemory: 2 ** 50, expertStatistics: "unrouted:0.25" });
    const grouped: LayerProjection["grouped"] = [];
    for (const limit of limits) {
      const [l] = await layer({ maxMemory: limit * GiB });
      grouped.push({
        limit,
        size: l.expert_groups?.size ?? (config.n_routed_experts as number),
        groups: l.expert_groups?.groups ?? 1,
        peak: l.peak_memory_bytes / GiB,
      });
    }
    out.push({
      model: name,
      experts: config.n_routed_experts as number,
      tokens,
      whole: { peak: whole.peak_memory_bytes / GiB, parameters: whole.memory.parameters / GiB, hessians: whole.memory.hessians / GiB },
      grouped,
      router_aware_whole_peak: aware.peak_memory_bytes / GiB,
    });
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

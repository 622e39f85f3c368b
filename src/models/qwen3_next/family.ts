/** Qwen3-Next and Qwen3.5-MoE (its text model) as model families. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type Qwen3NextConfig, parseQwen3NextConfig, parseQwen3_5MoeConfig } from "./config.js";
import { Qwen3NextForCausalLM } from "./modeling.js";
import { QWEN3_NEXT_DEFAULT_IGNORE, qwen3NextFusedGroups } from "./quant-defaults.js";

const TEXT_PRESET = {
  vocab_size: 260,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  max_position_embeddings: 512,
  rope_theta: 10000000,
  partial_rotary_factor: 0.25,
  full_attention_interval: 4,
  linear_conv_kernel_dim: 4,
  linear_key_head_dim: 16,
  linear_value_head_dim: 16,
  linear_num_key_heads: 2,
  linear_num_value_heads: 4,
  moe_intermediate_size: 32,
  shared_expert_intermediate_size: 48,
  num_experts_per_tok: 2,
  num_experts: 8,
  norm_topk_prob: true,
  bos_token_id: 256,
  eos_token_id: 257,
};

export const QWEN3_NEXT_FAMILY: ModelFamily = {
  modelType: "qwen3_next",
  parseConfig: (json, where) => parseQwen3NextConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new Qwen3NextForCausalLM(config as Qwen3NextConfig),
  // module names are the checkpoint's names; `mtp.*` is stored beside the model
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: QWEN3_NEXT_DEFAULT_IGNORE,
  fusedGroups: qwen3NextFusedGroups,
  isMoeLayer: (config, layer) => !(config as Qwen3NextConfig).denseLayers.includes(layer),
  randomPreset: { architectures: ["Qwen3NextForCausalLM"], model_type: "qwen3_next", ...TEXT_PRESET },
};

/**
 * Qwen3.5-MoE (`Qwen3_5MoeForConditionalGeneration`): its text model, read from under
 * `model.language_model.` with the routed experts fused as 3-D tensors (presented per expert);
 * the vision tower `model.visual.*` and `mtp.*` are copied byte for byte.
 */
export const QWEN3_5_MOE_FAMILY: ModelFamily = {
  ...QWEN3_NEXT_FAMILY,
  modelType: "qwen3_5_moe",
  parseConfig: (json, where) => parseQwen3_5MoeConfig(json, where),
  randomPreset: {
    architectures: ["Qwen3_5MoeForConditionalGeneration"],
    model_type: "qwen3_5_moe",
    tie_word_embeddings: false,
    text_config: { model_type: "qwen3_5_moe_text", ...TEXT_PRESET, attn_output_gate: true },
  },
};

/** Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) as a model family. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type Qwen3MoeConfig, isQwen3MoeLayer, parseQwen3MoeConfig } from "./config.js";
import { Qwen3MoeForCausalLM } from "./modeling.js";
import { QWEN3_MOE_DEFAULT_IGNORE } from "./quant-defaults.js";
import { hfFusedGroups } from "../fused.js";

export const QWEN3_MOE_FAMILY: ModelFamily = {
  modelType: "qwen3_moe",
  parseConfig: (json, where) => parseQwen3MoeConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new Qwen3MoeForCausalLM(config as Qwen3MoeConfig),
  // module names are the checkpoint's names
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: QWEN3_MOE_DEFAULT_IGNORE,
  // q/k/v, dense and shared-expert gate/up, and each layer's routed experts
  fusedGroups: hfFusedGroups,
  isMoeLayer: (config, layer) => isQwen3MoeLayer(config as Qwen3MoeConfig, layer),
  randomPreset: {
    model_type: "qwen3_moe",
    vocab_size: 260,
    hidden_size: 64,
    intermediate_size: 128,
    moe_intermediate_size: 32,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    max_position_embeddings: 512,
    rope_theta: 1e6,
    num_experts: 8,
    num_experts_per_tok: 2,
    norm_topk_prob: true,
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

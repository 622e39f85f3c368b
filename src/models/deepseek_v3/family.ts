/** DeepSeek-V3 / R1 / V3.1 and Kimi-K2 / Moonlight (the same DeepseekV3ForCausalLM) as model families. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type DeepseekV3Config, parseDeepseekV3Config } from "./config.js";
import { DeepseekV3ForCausalLM } from "./modeling.js";
import { DEEPSEEK_V3_DEFAULT_IGNORE, deepseekV3FusedGroups } from "./quant-defaults.js";

export const DEEPSEEK_V3_FAMILY: ModelFamily = {
  modelType: "deepseek_v3",
  parseConfig: (json, where) => parseDeepseekV3Config(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new DeepseekV3ForCausalLM(config as DeepseekV3Config),
  // module names are the checkpoint's names; the multi-token-prediction layers are not modules
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: DEEPSEEK_V3_DEFAULT_IGNORE,
  fusedGroups: deepseekV3FusedGroups,
  isMoeLayer: (config, layer) => layer >= (config as DeepseekV3Config).firstKDenseReplace,
  randomPreset: {
    architectures: ["DeepseekV3ForCausalLM"],
    model_type: "deepseek_v3",
    vocab_size: 260,
    hidden_size: 64,
    intermediate_size: 128,
    moe_intermediate_size: 32,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    q_lora_rank: 32,
    kv_lora_rank: 16,
    qk_nope_head_dim: 8,
    qk_rope_head_dim: 8,
    v_head_dim: 8,
    max_position_embeddings: 256,
    rope_theta: 10000,
    rope_scaling: {
      type: "yarn",
      factor: 4.0,
      original_max_position_embeddings: 64,
      beta_fast: 32,
      beta_slow: 1,
      mscale: 1.0,
      mscale_all_dim: 1.0,
    },
    n_routed_experts: 8,
    num_experts_per_tok: 2,
    n_shared_experts: 1,
    routed_scaling_factor: 2.5,
    n_group: 2,
    topk_group: 1,
    first_k_dense_replace: 1,
    topk_method: "noaux_tc",
    scoring_func: "sigmoid",
    rms_norm_eps: 1e-6,
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

/** Moonshot's Kimi-K2 configs name `model_type` "kimi_k2"; the architecture is DeepSeek-V3's. */
export const KIMI_K2_FAMILY: ModelFamily = {
  ...DEEPSEEK_V3_FAMILY,
  modelType: "kimi_k2",
  randomPreset: { ...DEEPSEEK_V3_FAMILY.randomPreset, model_type: "kimi_k2", n_group: 1, topk_group: 1 },
};

/** GLM-4.5 / 4.6 / 4.7 MoE (the DeepSeek-V3 MoE block) as a model family. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type Glm4MoeConfig, parseGlm4MoeConfig } from "./config.js";
import { Glm4MoeForCausalLM } from "./modeling.js";
import { GLM4_MOE_DEFAULT_IGNORE } from "./quant-defaults.js";
import { hfFusedGroups } from "../fused.js";

export const GLM4_MOE_FAMILY: ModelFamily = {
  modelType: "glm4_moe",
  parseConfig: (json, where) => parseGlm4MoeConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new Glm4MoeForCausalLM(config as Glm4MoeConfig),
  // module names are the checkpoint's names
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: GLM4_MOE_DEFAULT_IGNORE,
  // q/k/v, dense and shared-expert gate/up, and each layer's routed experts
  fusedGroups: hfFusedGroups,
  isMoeLayer: (config, layer) => layer >= (config as Glm4MoeConfig).firstKDenseReplace,
  randomPreset: {
    model_type: "glm4_moe",
    vocab_size: 260,
    hidden_size: 64,
    intermediate_size: 128,
    moe_intermediate_size: 32,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    partial_rotary_factor: 0.5,
    max_position_embeddings: 512,
    n_routed_experts: 8,
    num_experts_per_tok: 2,
    n_shared_experts: 1,
    routed_scaling_factor: 2.5,
    n_group: 2,
    topk_group: 1,
    first_k_dense_replace: 1,
    use_qk_norm: true,
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

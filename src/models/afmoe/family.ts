/** AFMoE (Arcee's Trinity) as a model family. */
import type { ModelConfig, ModelFamily } from "../family.js";
import { type AfmoeConfig, isMoeLayer, parseAfmoeConfig } from "./config.js";
import { AfmoeForCausalLM } from "./modeling.js";
import { AFMOE_DEFAULT_IGNORE, afmoeFusedGroups } from "./quant-defaults.js";
import { mapAfmoeWeights } from "./weights.js";

export const AFMOE_FAMILY: ModelFamily = {
  modelType: "afmoe",
  parseConfig: (json, where) => parseAfmoeConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new AfmoeForCausalLM(config as AfmoeConfig),
  mapWeights: (config, expected, available) => mapAfmoeWeights(config, expected, available),
  defaultIgnore: AFMOE_DEFAULT_IGNORE,
  fusedGroups: afmoeFusedGroups,
  isMoeLayer: (config, layer) => isMoeLayer(config as AfmoeConfig, layer),
  // the bundled tiny AFMoE's shape
  randomPreset: {
    model_type: "afmoe",
    vocab_size: 260,
    hidden_size: 128,
    intermediate_size: 256,
    moe_intermediate_size: 64,
    num_hidden_layers: 4,
    num_dense_layers: 1,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 32,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    max_position_embeddings: 2048,
    num_experts: 16,
    num_experts_per_tok: 2,
    num_shared_experts: 1,
    sliding_window: 64,
    global_attn_every_n_layers: 4,
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

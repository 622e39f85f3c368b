/** MiniMax-M2 / M2.1 / M2.5 / M2.7 as a model family. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type MiniMaxM2Config, parseMiniMaxM2Config } from "./config.js";
import { MiniMaxM2ForCausalLM } from "./modeling.js";
import { MINIMAX_M2_DEFAULT_IGNORE, miniMaxM2FusedGroups } from "./quant-defaults.js";

export const MINIMAX_M2_FAMILY: ModelFamily = {
  modelType: "minimax_m2",
  parseConfig: (json, where) => parseMiniMaxM2Config(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new MiniMaxM2ForCausalLM(config as MiniMaxM2Config),
  // module names are the checkpoint's names
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: MINIMAX_M2_DEFAULT_IGNORE,
  fusedGroups: miniMaxM2FusedGroups,
  // every layer has the MoE block
  isMoeLayer: () => true,
  randomPreset: {
    architectures: ["MiniMaxM2ForCausalLM"],
    model_type: "minimax_m2",
    vocab_size: 260,
    hidden_size: 64,
    intermediate_size: 32,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 32,
    rotary_dim: 16,
    max_position_embeddings: 512,
    rope_theta: 5000000,
    num_local_experts: 8,
    num_experts_per_tok: 2,
    scoring_func: "sigmoid",
    use_routing_bias: true,
    use_qk_norm: true,
    qk_norm_type: "per_layer",
    shared_intermediate_size: 0,
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

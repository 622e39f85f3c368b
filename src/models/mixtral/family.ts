/** Mixtral (Mixtral-8x7B, Mixtral-8x22B) as a model family. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type MixtralConfig, parseMixtralConfig } from "./config.js";
import { MixtralForCausalLM } from "./modeling.js";
import { MIXTRAL_DEFAULT_IGNORE, mixtralFusedGroups } from "./quant-defaults.js";

export const MIXTRAL_FAMILY: ModelFamily = {
  modelType: "mixtral",
  parseConfig: (json, where) => parseMixtralConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new MixtralForCausalLM(config as MixtralConfig),
  // module names are the checkpoint's names
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: MIXTRAL_DEFAULT_IGNORE,
  fusedGroups: mixtralFusedGroups,
  // every Mixtral layer is an MoE layer
  isMoeLayer: () => true,
  randomPreset: {
    model_type: "mixtral",
    vocab_size: 260,
    hidden_size: 64,
    intermediate_size: 32,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 512,
    rope_theta: 1e6,
    num_local_experts: 8,
    num_experts_per_tok: 2,
    bos_token_id: 256,
    eos_token_id: 257,
  },
};

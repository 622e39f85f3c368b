/** Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) as a model family. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type Qwen3MoeConfig, parseQwen3MoeConfig } from "./config.js";
import { Qwen3MoeForCausalLM } from "./modeling.js";
import { QWEN3_MOE_DEFAULT_IGNORE, qwen3MoeFusedGroups } from "./quant-defaults.js";

export const QWEN3_MOE_FAMILY: ModelFamily = {
  modelType: "qwen3_moe",
  parseConfig: (json, where) => parseQwen3MoeConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new Qwen3MoeForCausalLM(config as Qwen3MoeConfig),
  // module names are the checkpoint's names
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: QWEN3_MOE_DEFAULT_IGNORE,
  fusedGroups: qwen3MoeFusedGroups,
};

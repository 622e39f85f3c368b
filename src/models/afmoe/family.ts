/** AFMoE (Arcee's Trinity) as a model family. */
import type { ModelConfig, ModelFamily } from "../family.js";
import { type AfmoeConfig, parseAfmoeConfig } from "./config.js";
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
};

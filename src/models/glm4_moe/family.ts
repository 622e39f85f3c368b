/** GLM-4.5 / 4.6 / 4.7 MoE (the DeepSeek-V3 MoE block) as a model family. */
import { mapWeightsByName } from "../../nn/weights.js";
import type { ModelConfig, ModelFamily } from "../family.js";
import { type Glm4MoeConfig, parseGlm4MoeConfig } from "./config.js";
import { Glm4MoeForCausalLM } from "./modeling.js";
import { GLM4_MOE_DEFAULT_IGNORE, glm4MoeFusedGroups } from "./quant-defaults.js";

export const GLM4_MOE_FAMILY: ModelFamily = {
  modelType: "glm4_moe",
  parseConfig: (json, where) => parseGlm4MoeConfig(json, where),
  // the registry hands each family only configs it parsed itself
  build: (config: ModelConfig) => new Glm4MoeForCausalLM(config as Glm4MoeConfig),
  // module names are the checkpoint's names
  mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
  defaultIgnore: GLM4_MOE_DEFAULT_IGNORE,
  fusedGroups: glm4MoeFusedGroups,
};

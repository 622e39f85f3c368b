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
};

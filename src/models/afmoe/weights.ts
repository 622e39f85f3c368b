import type { AfmoeConfig } from "./config.js";
import { type WeightMapping, mapWeightsByName } from "../../nn/weights.js";

/**
 * Pure: match the model's parameters against the checkpoint's tensors. AFMoE's module names are
 * the Hugging Face names, so this is the by-name mapping (tied lm_head included).
 */
export function mapAfmoeWeights(
  config: Pick<AfmoeConfig, "tieWordEmbeddings">,
  expected: ReadonlyArray<readonly [string, readonly number[]]>,
  available: ReadonlyMap<string, readonly number[]>,
): WeightMapping {
  return mapWeightsByName(config, expected, available);
}

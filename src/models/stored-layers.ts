/**
 * Decoder layers a checkpoint stores but the causal LM does not run: the multi-token-prediction
 * layers of DeepSeek-V3 and GLM-4.5 (`model.layers.{L + k}`, L = num_hidden_layers, k <
 * num_nextn_predict_layers). They are copied unquantized, their Linear layers named in `ignore`.
 */
import type { ModelConfig } from "./family.js";

/** Whether tensor `n` lies in a stored-only layer. */
export function inStoredOnlyLayer(n: string, config: ModelConfig): boolean {
  const layer = /^model\.layers\.(\d+)\./.exec(n)?.[1];
  return layer !== undefined && Number(layer) >= config.numHiddenLayers && Number(layer) < (config.storedLayers ?? config.numHiddenLayers);
}

/**
 * The Linear layers of the stored-only layers, by their 2-D `.weight` tensors (the MTP layer's
 * own embed_tokens excepted), sorted: vLLM builds them as modules of its MTP draft model under
 * these names, so `ignore` must name them for it to load them unquantized.
 */
export function storedOnlyLinears(names: readonly string[], config: ModelConfig, shapeOf: (n: string) => readonly number[]): string[] {
  return names
    .filter((n) => inStoredOnlyLayer(n, config) && n.endsWith(".weight") && !n.endsWith(".embed_tokens.weight"))
    .filter((n) => shapeOf(n).length === 2)
    .map((n) => n.slice(0, -".weight".length))
    .sort();
}

/**
 * Tensors a checkpoint stores but the causal LM does not run: the multi-token-prediction layers
 * of DeepSeek-V3 and GLM-4.5 (`model.layers.{L + k}`, L = num_hidden_layers, k <
 * num_nextn_predict_layers), Qwen3-Next's `mtp.*`, Qwen3.5's vision tower. They are copied
 * unchanged, their Linear layers named in `ignore`.
 */
import type { ModelConfig } from "./family.js";

/** Whether tensor `n` lies in a stored-only layer (or under a stored-only prefix). */
export function inStoredOnlyLayer(n: string, config: ModelConfig): boolean {
  if (config.storedOnlyPrefixes?.some((p) => n.startsWith(p))) return true;
  const layer = /^model\.layers\.(\d+)\./.exec(n)?.[1];
  return layer !== undefined && Number(layer) >= config.numHiddenLayers && Number(layer) < (config.storedLayers ?? config.numHiddenLayers);
}

/**
 * The Linear layers of the stored-only layers, by their 2-D `.weight` tensors (embedding tables,
 * `embed_tokens` and a vision tower's `pos_embed`, excepted), sorted: vLLM builds them as modules of its MTP draft model under
 * these names, so `ignore` must name them for it to load them unquantized.
 */
export function storedOnlyLinears(names: readonly string[], config: ModelConfig, shapeOf: (n: string) => readonly number[]): string[] {
  return names
    .filter((n) => inStoredOnlyLayer(n, config) && n.endsWith(".weight") && !/(^|\.)(embed_tokens|pos_embed)\.weight$/.test(n))
    .filter((n) => shapeOf(n).length === 2)
    .map((n) => n.slice(0, -".weight".length))
    .sort();
}

/** The name the checkpoint stores a model tensor (or module) under: Qwen3.5's `model.` tensors live under `model.language_model.`. */
export function storedName(name: string, config: ModelConfig): string {
  const p = config.storedModelPrefix;
  return p && name.startsWith("model.") && !inStoredOnlyLayer(name, config) ? `${p}${name.slice("model.".length)}` : name;
}

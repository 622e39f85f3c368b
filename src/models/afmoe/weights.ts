import type { AfmoeConfig } from "./config.js";
import type { WeightMapping } from "../../nn/weights.js";

/**
 * Pure: match the model's parameters (name and shape) against the checkpoint's tensors.
 * Names are the Hugging Face names, so the mapping is the identity, except `lm_head.weight`
 * which falls back to `model.embed_tokens.weight` when embeddings are tied.
 */
export function mapAfmoeWeights(
  config: Pick<AfmoeConfig, "tieWordEmbeddings">,
  expected: ReadonlyArray<readonly [string, readonly number[]]>,
  available: ReadonlyMap<string, readonly number[]>,
): WeightMapping {
  const sources = new Map<string, string>();
  const missing: string[] = [];
  const wrongShape: string[] = [];
  const used = new Set<string>();
  for (const [name, shape] of expected) {
    let src = available.has(name) ? name : null;
    if (!src && name === "lm_head.weight" && config.tieWordEmbeddings && available.has("model.embed_tokens.weight")) {
      src = "model.embed_tokens.weight";
    }
    if (!src) {
      missing.push(name);
      continue;
    }
    used.add(src);
    const got = available.get(src) as readonly number[];
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      wrongShape.push(`${src}: checkpoint [${got.join(", ")}] vs model [${shape.join(", ")}]`);
      continue;
    }
    sources.set(name, src);
  }
  // rotary inverse frequencies are buffers some exporters save; they are recomputed here
  const unexpected = [...available.keys()].filter((n) => !used.has(n) && !n.endsWith("rotary_emb.inv_freq"));
  return { sources, missing, unexpected, wrongShape };
}

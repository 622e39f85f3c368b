/** Mixtral configuration (config.json), with defaults as in Hugging Face transformers' MixtralConfig. */
import { z } from "zod";
import { ROPE_FIELDS, attentionHeads, fieldFailure, parseConfigFields, ropeThetaOf } from "../config-fields.js";
import type { ModelConfig } from "../family.js";

export interface MixtralConfig extends ModelConfig {
  modelType: "mixtral";
  hiddenSize: number;
  /** the width of every expert (Mixtral has no dense layers) */
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** every layer's attention window, or null */
  slidingWindow: number | null;
  numExpertsPerTok: number;
}

/** Largest sizes accepted, checked before any module is built. */
export const MIXTRAL_LIMITS = {
  hidden_size: 65536,
  intermediate_size: 1_048_576,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  vocab_size: 4_194_304,
  max_position_embeddings: 16_777_216,
  num_local_experts: 4096,
  num_experts_per_tok: 4096,
} as const;

const posInt = z.number().int().positive();
const schema = z.object({
  model_type: z.literal("mixtral"),
  hidden_size: posInt.default(4096),
  intermediate_size: posInt.default(14336),
  num_hidden_layers: posInt.default(32),
  num_attention_heads: posInt.default(32),
  num_key_value_heads: posInt.nullable().default(8),
  head_dim: posInt.nullable().optional(),
  vocab_size: posInt.default(32000),
  rms_norm_eps: z.number().positive().default(1e-5),
  ...ROPE_FIELDS,
  max_position_embeddings: posInt.default(131072),
  tie_word_embeddings: z.boolean().default(false),
  sliding_window: posInt.nullable().default(null),
  num_local_experts: posInt.default(8),
  num_experts_per_tok: posInt.default(2),
  hidden_act: z.literal("silu").default("silu"),
});

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseMixtralConfig(json: unknown, where = "config.json"): MixtralConfig {
  const c = parseConfigFields(schema, json, where, MIXTRAL_LIMITS);
  const fail = fieldFailure(where);

  const { nKV, headDim } = attentionHeads(c, fail);
  if (c.num_experts_per_tok > c.num_local_experts)
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_local_experts ${c.num_local_experts}`);
  const ropeTheta = ropeThetaOf(c, 1e6, fail);
  return {
    modelType: "mixtral",
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: nKV,
    headDim,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta,
    maxPositionEmbeddings: c.max_position_embeddings,
    tieWordEmbeddings: c.tie_word_embeddings,
    slidingWindow: c.sliding_window,
    numExperts: c.num_local_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    raw: json as Record<string, unknown>,
  };
}

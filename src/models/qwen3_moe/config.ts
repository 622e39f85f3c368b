/** Qwen3-MoE configuration (config.json), with defaults as in Hugging Face transformers' Qwen3MoeConfig. */
import { z } from "zod";
import { ROPE_FIELDS, attentionHeads, fieldFailure, parseConfigFields, ropeThetaOf } from "../config-fields.js";
import type { ModelConfig } from "../family.js";

export interface Qwen3MoeConfig extends ModelConfig {
  modelType: "qwen3_moe";
  hiddenSize: number;
  /** dense MLP width (layers that are not MoE) */
  intermediateSize: number;
  moeIntermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  attentionBias: boolean;
  /** the sliding window when use_sliding_window is true, else null */
  slidingWindow: number | null;
  decoderSparseStep: number;
  mlpOnlyLayers: number[];
  numExpertsPerTok: number;
  normTopkProb: boolean;
}

/** Largest sizes accepted, checked before any module is built. */
export const QWEN3_MOE_LIMITS = {
  hidden_size: 65536,
  intermediate_size: 1_048_576,
  moe_intermediate_size: 1_048_576,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  vocab_size: 4_194_304,
  max_position_embeddings: 16_777_216,
  num_experts: 4096,
  num_experts_per_tok: 4096,
} as const;

const posInt = z.number().int().positive();
const schema = z.object({
  model_type: z.literal("qwen3_moe"),
  hidden_size: posInt.default(2048),
  intermediate_size: posInt.default(6144),
  moe_intermediate_size: posInt.default(768),
  num_hidden_layers: posInt.default(24),
  num_attention_heads: posInt.default(32),
  num_key_value_heads: posInt.nullable().default(4),
  head_dim: posInt.nullable().optional(),
  vocab_size: posInt.default(151936),
  rms_norm_eps: z.number().positive().default(1e-6),
  ...ROPE_FIELDS,
  max_position_embeddings: posInt.default(32768),
  tie_word_embeddings: z.boolean().default(false),
  attention_bias: z.boolean().default(false),
  use_sliding_window: z.boolean().default(false),
  sliding_window: posInt.nullable().default(4096),
  decoder_sparse_step: posInt.default(1),
  mlp_only_layers: z.array(z.number().int().nonnegative()).nullable().default([]),
  num_experts: z.number().int().nonnegative().default(128),
  num_experts_per_tok: posInt.default(8),
  norm_topk_prob: z.boolean().default(false),
  hidden_act: z.literal("silu").default("silu"),
});

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseQwen3MoeConfig(json: unknown, where = "config.json"): Qwen3MoeConfig {
  const c = parseConfigFields(schema, json, where, QWEN3_MOE_LIMITS);
  const fail = fieldFailure(where);

  const { nKV, headDim } = attentionHeads(c, fail);
  if (c.num_experts > 0 && c.num_experts_per_tok > c.num_experts)
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_experts ${c.num_experts}`);
  const ropeTheta = ropeThetaOf(c, 10000, fail);
  return {
    modelType: "qwen3_moe",
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: nKV,
    headDim,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta,
    maxPositionEmbeddings: c.max_position_embeddings,
    tieWordEmbeddings: c.tie_word_embeddings,
    attentionBias: c.attention_bias,
    slidingWindow: c.use_sliding_window
      ? (c.sliding_window ?? fail("sliding_window", "use_sliding_window is true but sliding_window is null"))
      : null,
    decoderSparseStep: c.decoder_sparse_step,
    mlpOnlyLayers: c.mlp_only_layers ?? [],
    numExperts: c.num_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    normTopkProb: c.norm_topk_prob,
    raw: json as Record<string, unknown>,
  };
}

/** Layer i uses the sparse MoE block iff it is not MLP-only, there are experts, and (i + 1) % decoder_sparse_step == 0. */
export function isQwen3MoeLayer(config: Qwen3MoeConfig, layer: number): boolean {
  return !config.mlpOnlyLayers.includes(layer) && config.numExperts > 0 && (layer + 1) % config.decoderSparseStep === 0;
}

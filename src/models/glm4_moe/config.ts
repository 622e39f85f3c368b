/** GLM-4.5 MoE configuration (config.json), with defaults as in Hugging Face transformers' Glm4MoeConfig. */
import { z } from "zod";
import { type FieldFailure, activationScale, fieldFailure, parseConfigFields, ropeThetaOf } from "../config-fields.js";
import type { ModelConfig } from "../family.js";

export interface Glm4MoeConfig extends ModelConfig {
  modelType: "glm4_moe";
  hiddenSize: number;
  /** dense MLP width (the first `first_k_dense_replace` layers) */
  intermediateSize: number;
  moeIntermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  /** RoPE dims per head: floor(head_dim * partial_rotary_factor) */
  rotaryDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  attentionBias: boolean;
  useQkNorm: boolean;
  numExpertsPerTok: number;
  numSharedExperts: number;
  routedScalingFactor: number;
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  firstKDenseReplace: number;
}

/** What GLM-4.5's router and MoE block read of a config (DeepSeek-V3's block is the same). */
export type Glm4MoeBlockConfig = Pick<
  Glm4MoeConfig,
  | "hiddenSize"
  | "moeIntermediateSize"
  | "numExperts"
  | "numExpertsPerTok"
  | "numSharedExperts"
  | "routedScalingFactor"
  | "nGroup"
  | "topkGroup"
  | "normTopkProb"
>;

/** The grouped router's fields checked against each other (GLM-4.5 and DeepSeek-V3 configs). */
export function checkGroupedRouting(
  c: {
    n_routed_experts: number;
    num_experts_per_tok: number;
    n_group: number;
    topk_group: number;
    first_k_dense_replace: number;
    num_hidden_layers: number;
  },
  fail: FieldFailure,
): void {
  const E = c.n_routed_experts;
  if (c.num_experts_per_tok > E) fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds n_routed_experts ${E}`);
  if (E % c.n_group !== 0 || E / c.n_group < 2)
    fail("n_group", `${c.n_group} groups must split n_routed_experts ${E} into equal groups of at least 2`);
  if (c.topk_group > c.n_group) fail("topk_group", `${c.topk_group} exceeds n_group ${c.n_group}`);
  if (c.num_experts_per_tok > (c.topk_group * E) / c.n_group)
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds the ${(c.topk_group * E) / c.n_group} experts of the kept groups`);
  if (c.first_k_dense_replace > c.num_hidden_layers)
    fail("first_k_dense_replace", `${c.first_k_dense_replace} exceeds num_hidden_layers ${c.num_hidden_layers}`);
}

/** Largest sizes accepted, checked before any module is built. */
export const GLM4_MOE_LIMITS = {
  hidden_size: 65536,
  intermediate_size: 1_048_576,
  moe_intermediate_size: 1_048_576,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  vocab_size: 4_194_304,
  max_position_embeddings: 16_777_216,
  n_routed_experts: 4096,
  num_experts_per_tok: 4096,
  n_shared_experts: 64,
  num_nextn_predict_layers: 64,
} as const;

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const schema = z.object({
  model_type: z.literal("glm4_moe"),
  hidden_size: posInt.default(4096),
  intermediate_size: posInt.default(10944),
  moe_intermediate_size: posInt.default(1408),
  num_hidden_layers: posInt.default(46),
  num_attention_heads: posInt.default(96),
  num_key_value_heads: posInt.nullable().default(8),
  head_dim: posInt.nullable().optional(),
  partial_rotary_factor: z.number().positive().max(1).default(0.5),
  vocab_size: posInt.default(151552),
  rms_norm_eps: z.number().positive().default(1e-5),
  rope_theta: z.number().positive().optional(),
  rope_parameters: z
    .object({
      rope_type: z.string().optional(),
      rope_theta: z.number().positive(),
      partial_rotary_factor: z.number().positive().max(1).optional(),
    })
    .passthrough()
    .nullable()
    .optional(),
  rope_scaling: z.null().optional(),
  max_position_embeddings: posInt.default(131072),
  tie_word_embeddings: z.boolean().default(false),
  attention_bias: z.boolean().default(false),
  use_qk_norm: z.boolean().default(false),
  n_routed_experts: posInt.default(128),
  num_experts_per_tok: posInt.default(8),
  n_shared_experts: nonNegInt.default(1),
  routed_scaling_factor: activationScale.default(1.0),
  n_group: posInt.default(1),
  topk_group: posInt.default(1),
  norm_topk_prob: z.boolean().default(true),
  first_k_dense_replace: nonNegInt.default(1),
  num_nextn_predict_layers: nonNegInt.default(0),
  hidden_act: z.literal("silu").default("silu"),
});

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseGlm4MoeConfig(json: unknown, where = "config.json"): Glm4MoeConfig {
  const c = parseConfigFields(schema, json, where, GLM4_MOE_LIMITS);
  const fail = fieldFailure(where);

  const nKV = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % nKV !== 0) fail("num_key_value_heads", `${nKV} does not divide num_attention_heads ${c.num_attention_heads}`);
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim)) fail("head_dim", `${headDim} is not an integer`);
  const factor = c.rope_parameters?.partial_rotary_factor ?? c.partial_rotary_factor;
  const rotaryDim = Math.floor(headDim * factor);
  if (rotaryDim < 2 || rotaryDim % 2 !== 0)
    fail("partial_rotary_factor", `gives ${rotaryDim} rotary dims of ${headDim}; RoPE needs an even number`);
  checkGroupedRouting(c, fail);
  const ropeTheta = ropeThetaOf(c, 10000, fail);
  return {
    modelType: "glm4_moe",
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    storedLayers: c.num_hidden_layers + c.num_nextn_predict_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: nKV,
    headDim,
    rotaryDim,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta,
    maxPositionEmbeddings: c.max_position_embeddings,
    tieWordEmbeddings: c.tie_word_embeddings,
    attentionBias: c.attention_bias,
    useQkNorm: c.use_qk_norm,
    numExperts: c.n_routed_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    numSharedExperts: c.n_shared_experts,
    routedScalingFactor: c.routed_scaling_factor,
    nGroup: c.n_group,
    topkGroup: c.topk_group,
    normTopkProb: c.norm_topk_prob,
    firstKDenseReplace: c.first_k_dense_replace,
    raw: json as Record<string, unknown>,
  };
}

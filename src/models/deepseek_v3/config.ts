/**
 * DeepSeek-V3 / Kimi-K2 configuration (config.json), with defaults as in Hugging Face transformers'
 * DeepseekV3Config (../shared/spec/deepseek_v3.md).
 */
import { z } from "zod";
import { activationScale, type FieldFailure, fieldFailure, parseConfigFields } from "../config-fields.js";
import type { ModelConfig } from "../family.js";
import { checkGroupedRouting, type Glm4MoeBlockConfig } from "../glm4_moe/config.js";
import type { YarnScaling } from "../../nn/rope.js";

export interface DeepseekV3Config extends ModelConfig, Glm4MoeBlockConfig {
  modelType: "deepseek_v3" | "kimi_k2";
  /** dense MLP width (the first `first_k_dense_replace` layers) */
  intermediateSize: number;
  numAttentionHeads: number;
  /** null: no query compression (q_proj) */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  yarn: YarnScaling | null;
  /** RoPE on adjacent pairs (DeepSeek's layout) instead of rotate-half */
  ropeInterleave: boolean;
  firstKDenseReplace: number;
}

/** Largest sizes accepted, checked before any module is built. */
export const DEEPSEEK_V3_LIMITS = {
  hidden_size: 65536,
  intermediate_size: 1_048_576,
  moe_intermediate_size: 1_048_576,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  q_lora_rank: 65536,
  kv_lora_rank: 65536,
  qk_nope_head_dim: 4096,
  qk_rope_head_dim: 4096,
  v_head_dim: 4096,
  vocab_size: 4_194_304,
  max_position_embeddings: 16_777_216,
  n_routed_experts: 4096,
  num_experts_per_tok: 4096,
  n_shared_experts: 64,
  num_nextn_predict_layers: 64,
} as const;

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const ropeSettings = z
  .object({
    type: z.string().optional(),
    rope_type: z.string().optional(),
    rope_theta: z.number().positive().optional(),
    factor: z.number().positive().optional(),
    original_max_position_embeddings: posInt.optional(),
    beta_fast: z.number().positive().optional(),
    beta_slow: z.number().positive().optional(),
    mscale: z.number().nonnegative().optional(),
    mscale_all_dim: z.number().nonnegative().optional(),
    attention_factor: z.number().positive().optional(),
  })
  .passthrough();

const schema = z.object({
  model_type: z.enum(["deepseek_v3", "kimi_k2"]),
  hidden_size: posInt.default(7168),
  intermediate_size: posInt.default(18432),
  moe_intermediate_size: posInt.default(2048),
  num_hidden_layers: posInt.default(61),
  num_attention_heads: posInt.default(128),
  num_key_value_heads: posInt.nullable().optional(),
  n_routed_experts: posInt.default(256),
  n_shared_experts: nonNegInt.default(1),
  num_experts_per_tok: posInt.default(8),
  n_group: posInt.default(8),
  topk_group: posInt.default(4),
  routed_scaling_factor: activationScale.default(2.5),
  norm_topk_prob: z.boolean().default(true),
  first_k_dense_replace: nonNegInt.default(3),
  q_lora_rank: posInt.nullable().default(1536),
  kv_lora_rank: posInt.default(512),
  qk_nope_head_dim: nonNegInt.default(128),
  qk_rope_head_dim: posInt.default(64),
  v_head_dim: posInt.default(128),
  rms_norm_eps: z.number().positive().default(1e-6),
  rope_theta: z.number().positive().optional(),
  rope_scaling: ropeSettings.nullable().optional(),
  rope_parameters: ropeSettings.nullable().optional(),
  rope_interleave: z.boolean().default(true),
  attention_bias: z.boolean().default(false),
  tie_word_embeddings: z.boolean().default(false),
  vocab_size: posInt.default(129280),
  max_position_embeddings: posInt.default(4096),
  num_nextn_predict_layers: nonNegInt.default(0),
  hidden_act: z.literal("silu").default("silu"),
  // transformers ignores these two (always sigmoid with the correction bias); vLLM reads them
  topk_method: z
    .literal("noaux_tc", { message: 'must be "noaux_tc": moecal computes the sigmoid router with its correction bias' })
    .optional(),
  scoring_func: z
    .literal("sigmoid", { message: 'must be "sigmoid": moecal computes the sigmoid router with its correction bias' })
    .optional(),
});

type Parsed = z.infer<typeof schema>;

/** RoPE theta and YaRN from rope_scaling (transformers 4) or rope_parameters (transformers 5); other scalings refused. */
function ropeOf(c: Parsed, fail: FieldFailure): { ropeTheta: number; yarn: YarnScaling | null } {
  const field = c.rope_scaling ? "rope_scaling" : "rope_parameters";
  const r = c.rope_scaling ?? c.rope_parameters ?? null;
  const ropeTheta = c.rope_theta ?? c.rope_parameters?.rope_theta ?? 10000;
  const kind = r ? (r.rope_type ?? r.type ?? "default") : "default";
  if (kind === "default") return { ropeTheta, yarn: null };
  if (kind !== "yarn") fail(`${field}.rope_type`, `"${kind}" is not supported (default RoPE or "yarn")`);
  const rr = r as z.infer<typeof ropeSettings>;
  if (rr.factor === undefined) fail(`${field}.factor`, "missing (required for yarn)");
  const yarn: YarnScaling = {
    factor: rr.factor as number,
    originalMaxPositionEmbeddings: rr.original_max_position_embeddings ?? c.max_position_embeddings,
    betaFast: rr.beta_fast ?? 32,
    betaSlow: rr.beta_slow ?? 1,
    mscale: rr.mscale || null,
    mscaleAllDim: rr.mscale_all_dim || null,
    attentionFactor: rr.attention_factor ?? null,
  };
  return { ropeTheta, yarn };
}

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseDeepseekV3Config(json: unknown, where = "config.json"): DeepseekV3Config {
  const c = parseConfigFields(schema, json, where, DEEPSEEK_V3_LIMITS);
  const fail = fieldFailure(where);
  checkGroupedRouting(c, fail);
  // transformers would add biases to q_a/kv_a/o_proj, vLLM's DeepseekV2 attention has none: the served model would differ
  if (c.attention_bias) fail("attention_bias", "true is not supported (vLLM's DeepSeek attention has no biases)");
  if (c.qk_rope_head_dim % 2 !== 0) fail("qk_rope_head_dim", `${c.qk_rope_head_dim} must be even for RoPE`);
  const { ropeTheta, yarn } = ropeOf(c, fail);
  return {
    modelType: c.model_type,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    storedLayers: c.num_hidden_layers + c.num_nextn_predict_layers,
    numAttentionHeads: c.num_attention_heads,
    qLoraRank: c.q_lora_rank,
    kvLoraRank: c.kv_lora_rank,
    qkNopeHeadDim: c.qk_nope_head_dim,
    qkRopeHeadDim: c.qk_rope_head_dim,
    vHeadDim: c.v_head_dim,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta,
    yarn,
    ropeInterleave: c.rope_interleave,
    maxPositionEmbeddings: c.max_position_embeddings,
    tieWordEmbeddings: c.tie_word_embeddings,
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

/** Qwen3-MoE configuration (config.json), with defaults as in Hugging Face transformers' Qwen3MoeConfig. */
import { z } from "zod";
import { ConfigError } from "../../errors.js";
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
  rope_theta: z.number().positive().optional(),
  rope_parameters: z.object({ rope_type: z.string().optional(), rope_theta: z.number().positive() }).passthrough().nullable().optional(),
  rope_scaling: z.null().optional(),
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
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ConfigError(`${where}: not a JSON object`);
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new ConfigError(`${where}: field "${issue?.path.join(".") || "(root)"}": ${issue?.message ?? "invalid"}`);
  }
  const c = r.data;
  for (const [field, max] of Object.entries(QWEN3_MOE_LIMITS)) {
    const v = (c as Record<string, unknown>)[field];
    if (typeof v === "number" && v > max) throw new ConfigError(`${where}: field "${field}": ${v} exceeds moecal's limit of ${max}`);
  }
  const fail = (field: string, msg: string): never => {
    throw new ConfigError(`${where}: field "${field}": ${msg}`);
  };
  const nKV = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % nKV !== 0) fail("num_key_value_heads", `${nKV} does not divide num_attention_heads ${c.num_attention_heads}`);
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) fail("head_dim", `${headDim} must be an even integer for RoPE`);
  if (c.num_experts > 0 && c.num_experts_per_tok > c.num_experts)
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_experts ${c.num_experts}`);
  let ropeTheta = c.rope_theta ?? 10000;
  if (c.rope_parameters) {
    if ((c.rope_parameters.rope_type ?? "default") !== "default")
      fail("rope_parameters.rope_type", `"${c.rope_parameters.rope_type}" is not supported (only "default" RoPE)`);
    if (c.rope_theta !== undefined && c.rope_theta !== c.rope_parameters.rope_theta)
      fail("rope_parameters.rope_theta", `${c.rope_parameters.rope_theta} disagrees with rope_theta ${c.rope_theta}`);
    ropeTheta = c.rope_parameters.rope_theta;
  }
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

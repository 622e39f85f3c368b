/**
 * Qwen3-Next and Qwen3.5-MoE configuration (config.json; Qwen3.5's text fields under `text_config`),
 * with defaults as in Hugging Face transformers' Qwen3NextConfig / Qwen3_5MoeTextConfig
 * (../shared/spec/qwen3_next.md).
 */
import { z } from "zod";
import { ConfigError } from "../../errors.js";
import { type FieldFailure, fieldFailure, parseConfigFields } from "../config-fields.js";
import type { ModelConfig } from "../family.js";

export type LayerType = "linear_attention" | "full_attention";

export interface Qwen3NextConfig extends ModelConfig {
  modelType: "qwen3_next" | "qwen3_5_moe";
  hiddenSize: number;
  /** dense MLP width (qwen3_next's mlp_only_layers; Qwen3.5 has none) */
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  /** RoPE dims per head: int(head_dim * partial_rotary_factor) */
  rotaryDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  attentionBias: boolean;
  layerTypes: LayerType[];
  /** Gated DeltaNet: conv kernel, key/value head dims and counts */
  linear: { convKernel: number; keyHeadDim: number; valueHeadDim: number; numKeyHeads: number; numValueHeads: number };
  moeIntermediateSize: number;
  sharedExpertIntermediateSize: number;
  normTopkProb: boolean;
  /** layers with a dense MLP instead of the MoE block */
  denseLayers: number[];
}

/** Largest sizes accepted, checked before any module is built. */
export const QWEN3_NEXT_LIMITS = {
  hidden_size: 65536,
  intermediate_size: 1_048_576,
  moe_intermediate_size: 1_048_576,
  shared_expert_intermediate_size: 1_048_576,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  linear_conv_kernel_dim: 64,
  linear_key_head_dim: 4096,
  linear_value_head_dim: 4096,
  linear_num_key_heads: 1024,
  linear_num_value_heads: 1024,
  vocab_size: 4_194_304,
  max_position_embeddings: 16_777_216,
  num_experts: 4096,
  num_experts_per_tok: 4096,
} as const;

const posInt = z.number().int().positive();
const textSchema = z.object({
  vocab_size: posInt.default(151936),
  hidden_size: posInt.default(2048),
  intermediate_size: posInt.default(5632),
  num_hidden_layers: posInt.default(48),
  num_attention_heads: posInt.default(16),
  num_key_value_heads: posInt.default(2),
  head_dim: posInt.default(256),
  hidden_act: z.literal("silu").default("silu"),
  rms_norm_eps: z.number().positive().default(1e-6),
  rope_theta: z.number().positive().optional(),
  partial_rotary_factor: z.number().positive().max(1).optional(),
  rope_scaling: z.null().optional(),
  rope_parameters: z
    .object({
      rope_type: z.literal("default", { message: 'must be "default"' }).optional(),
      rope_theta: z.number().positive(),
      partial_rotary_factor: z.number().positive().max(1).optional(),
    })
    .passthrough()
    .nullable()
    .optional(),
  max_position_embeddings: posInt.default(32768),
  tie_word_embeddings: z.boolean().optional(),
  attention_bias: z.boolean().default(false),
  attn_output_gate: z.literal(true, { message: "must be true (the gated attention is the architecture)" }).optional(),
  linear_conv_kernel_dim: posInt.default(4),
  linear_key_head_dim: posInt.default(128),
  linear_value_head_dim: posInt.default(128),
  linear_num_key_heads: posInt.default(16),
  linear_num_value_heads: posInt.default(32),
  layer_types: z.array(z.enum(["linear_attention", "full_attention"])).optional(),
  full_attention_interval: posInt.default(4),
  decoder_sparse_step: posInt.default(1),
  mlp_only_layers: z.array(z.number().int().nonnegative()).default([]),
  moe_intermediate_size: posInt.default(512),
  shared_expert_intermediate_size: z.number().int().nonnegative().default(512),
  num_experts_per_tok: posInt.default(10),
  num_experts: posInt.default(512),
  norm_topk_prob: z.boolean().default(true),
});

type Text = z.infer<typeof textSchema>;

/** The fields of the text model, checked against each other. */
function textConfig(c: Text, fail: FieldFailure): Omit<Qwen3NextConfig, "modelType" | "raw" | "tieWordEmbeddings"> {
  if (c.num_attention_heads % c.num_key_value_heads !== 0)
    fail("num_key_value_heads", `${c.num_key_value_heads} does not divide num_attention_heads ${c.num_attention_heads}`);
  if (c.linear_num_value_heads % c.linear_num_key_heads !== 0)
    fail("linear_num_value_heads", `${c.linear_num_value_heads} is not a multiple of linear_num_key_heads ${c.linear_num_key_heads}`);
  if (c.num_experts_per_tok > c.num_experts) fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_experts ${c.num_experts}`);
  const L = c.num_hidden_layers;
  const layerTypes =
    c.layer_types ??
    Array.from({ length: L }, (_, i) => ((i + 1) % c.full_attention_interval === 0 ? "full_attention" : "linear_attention"));
  if (layerTypes.length !== L) fail("layer_types", `has ${layerTypes.length} entries for ${L} layers`);
  const factor = c.rope_parameters?.partial_rotary_factor ?? c.partial_rotary_factor ?? 0.25;
  const rotaryDim = Math.floor(c.head_dim * factor);
  if (rotaryDim < 2 || rotaryDim % 2 !== 0)
    fail("partial_rotary_factor", `gives ${rotaryDim} rotary dims of ${c.head_dim}; RoPE needs an even number`);
  const theta = c.rope_parameters?.rope_theta ?? c.rope_theta ?? 10000;
  if (c.rope_parameters && c.rope_theta !== undefined && c.rope_theta !== theta)
    fail("rope_parameters.rope_theta", `${theta} disagrees with rope_theta ${c.rope_theta}`);
  const bad = c.mlp_only_layers.find((i) => i >= L);
  if (bad !== undefined) fail("mlp_only_layers", `layer ${bad} does not exist (${L} layers)`);
  return {
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numHiddenLayers: L,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: c.num_key_value_heads,
    headDim: c.head_dim,
    rotaryDim,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta: theta,
    attentionBias: c.attention_bias,
    layerTypes,
    linear: {
      convKernel: c.linear_conv_kernel_dim,
      keyHeadDim: c.linear_key_head_dim,
      valueHeadDim: c.linear_value_head_dim,
      numKeyHeads: c.linear_num_key_heads,
      numValueHeads: c.linear_num_value_heads,
    },
    moeIntermediateSize: c.moe_intermediate_size,
    sharedExpertIntermediateSize: c.shared_expert_intermediate_size,
    numExperts: c.num_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    normTopkProb: c.norm_topk_prob,
    denseLayers: Array.from({ length: L }, (_, i) => i).filter(
      (i) => c.mlp_only_layers.includes(i) || (i + 1) % c.decoder_sparse_step !== 0,
    ),
    vocabSize: c.vocab_size,
    maxPositionEmbeddings: c.max_position_embeddings,
  };
}

/** Validate a parsed qwen3_next config.json. `where` names the file in errors. */
export function parseQwen3NextConfig(json: unknown, where = "config.json"): Qwen3NextConfig {
  const c = parseConfigFields(textSchema.extend({ model_type: z.literal("qwen3_next") }), json, where, QWEN3_NEXT_LIMITS);
  // the MTP head (`mtp.*`) is stored beside the model and never run
  return {
    ...textConfig(c, fieldFailure(where)),
    modelType: "qwen3_next",
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    storedOnlyPrefixes: ["mtp."],
    raw: json as Record<string, unknown>,
  };
}

/**
 * Validate a Qwen3.5-MoE config.json: its text model under `text_config` (errors name
 * `text_config.<field>`), every layer MoE and always renormalised (transformers' router has no switch).
 */
export function parseQwen3_5MoeConfig(json: unknown, where = "config.json"): Qwen3NextConfig {
  const top = parseConfigFields(
    z.object({
      model_type: z.literal("qwen3_5_moe"),
      text_config: z.record(z.string(), z.unknown()),
      tie_word_embeddings: z.boolean().optional(),
    }),
    json,
    where,
    {},
  );
  const inner = `${where} (text_config)`;
  let text: Text;
  try {
    text = parseConfigFields(
      textSchema.extend({ model_type: z.literal("qwen3_5_moe_text").optional() }),
      top.text_config,
      inner,
      QWEN3_NEXT_LIMITS,
    );
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(e.message.replace(`${inner}: field "`, `${where}: field "text_config.`));
    throw e;
  }
  const t = textConfig({ ...text, mlp_only_layers: [], decoder_sparse_step: 1 }, (field, msg) =>
    fieldFailure(where)(`text_config.${field}`, msg),
  );
  return {
    ...t,
    modelType: "qwen3_5_moe",
    normTopkProb: true,
    tieWordEmbeddings: top.tie_word_embeddings ?? text.tie_word_embeddings ?? false,
    storedOnlyPrefixes: ["mtp.", "model.visual."],
    storedModelPrefix: "model.language_model.",
    raw: json as Record<string, unknown>,
  };
}

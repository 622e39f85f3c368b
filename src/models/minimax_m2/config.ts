/**
 * MiniMax-M2 configuration (config.json), with defaults as in Hugging Face transformers'
 * MiniMaxM2Config (../shared/spec/minimax_m2.md). Values the implementations do not agree on are
 * refused naming the field, never guessed.
 */
import { z } from "zod";
import { type FieldFailure, ROPE_FIELDS, fieldFailure, parseConfigFields, ropeThetaOf } from "../config-fields.js";
import type { ModelConfig } from "../family.js";

export interface MiniMaxM2Config extends ModelConfig {
  modelType: "minimax_m2";
  hiddenSize: number;
  /** the width of every routed expert (there is no dense MLP) */
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  /** RoPE dims per head (rotary_dim) */
  rotaryDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** the router's selection-only correction bias (`block_sparse_moe.e_score_correction_bias`) */
  useRoutingBias: boolean;
}

/** Largest sizes accepted, checked before any module is built. */
export const MINIMAX_M2_LIMITS = {
  hidden_size: 65536,
  intermediate_size: 1_048_576,
  num_hidden_layers: 1024,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  rotary_dim: 4096,
  vocab_size: 4_194_304,
  max_position_embeddings: 16_777_216,
  num_local_experts: 4096,
  num_experts_per_tok: 4096,
  num_mtp_modules: 64,
} as const;

const posInt = z.number().int().positive();
const schema = z.object({
  model_type: z.literal("minimax_m2"),
  hidden_size: posInt.default(3072),
  intermediate_size: posInt.default(1536),
  num_hidden_layers: posInt.default(62),
  num_attention_heads: posInt.default(48),
  num_key_value_heads: posInt.default(8),
  // transformers defaults to 128, remote code and vLLM to hidden_size / heads: required
  head_dim: posInt,
  rotary_dim: posInt.optional(),
  ...ROPE_FIELDS,
  rope_parameters: z
    .object({
      rope_type: z.string().optional(),
      rope_theta: z.number().positive(),
      partial_rotary_factor: z.number().positive().max(1).optional(),
    })
    .passthrough()
    .nullable()
    .optional(),
  rms_norm_eps: z.number().positive().default(1e-6),
  vocab_size: posInt.default(200064),
  max_position_embeddings: posInt.default(196608),
  tie_word_embeddings: z.boolean().default(false),
  num_local_experts: posInt.default(256),
  num_experts_per_tok: posInt.default(8),
  scoring_func: z
    .literal("sigmoid", { message: 'must be "sigmoid" (remote code and vLLM would use softmax otherwise, transformers sigmoid)' })
    .default("sigmoid"),
  use_routing_bias: z.boolean().default(true),
  use_qk_norm: z.literal(true, { message: "must be true (transformers and vLLM build the q/k norms whatever it says)" }).default(true),
  qk_norm_type: z.literal("per_layer", { message: 'must be "per_layer" (one norm over all heads)' }).default("per_layer"),
  shared_intermediate_size: z.literal(0, { message: "must be 0 (no implementation builds a shared expert)" }).default(0),
  attn_type_list: z
    .array(z.literal(1, { message: "must be 1 (full softmax attention; lightning attention is not MiniMax-M2's)" }))
    .optional(),
  attention_bias: z.literal(false, { message: "must be false (vLLM would add q/k/v biases, transformers never)" }).optional(),
  use_mtp: z.boolean().default(false),
  num_mtp_modules: z.number().int().nonnegative().default(0),
  sliding_window: z.null().optional(),
  hidden_act: z.literal("silu").default("silu"),
});

/** R: `rotary_dim`, or int(head_dim * rope_parameters.partial_rotary_factor); neither is refused (the implementations differ). */
function rotaryDimOf(c: z.infer<typeof schema>, fail: FieldFailure): number {
  const factor = c.rope_parameters?.partial_rotary_factor;
  const R = c.rotary_dim ?? (factor !== undefined ? Math.floor(c.head_dim * factor) : null);
  if (R === null) return fail("rotary_dim", "missing (required: transformers, the remote code and vLLM default it differently)");
  if (R > c.head_dim || R < 2 || R % 2 !== 0) fail("rotary_dim", `${R} must be even and at most head_dim ${c.head_dim}`);
  return R;
}

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseMiniMaxM2Config(json: unknown, where = "config.json"): MiniMaxM2Config {
  const c = parseConfigFields(schema, json, where, MINIMAX_M2_LIMITS);
  const fail = fieldFailure(where);
  if (c.num_attention_heads % c.num_key_value_heads !== 0)
    fail("num_key_value_heads", `${c.num_key_value_heads} does not divide num_attention_heads ${c.num_attention_heads}`);
  if (c.num_experts_per_tok > c.num_local_experts)
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_local_experts ${c.num_local_experts}`);
  if (c.attn_type_list && c.attn_type_list.length !== c.num_hidden_layers)
    fail("attn_type_list", `has ${c.attn_type_list.length} entries for ${c.num_hidden_layers} layers`);
  return {
    modelType: "minimax_m2",
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    storedLayers: c.num_hidden_layers + (c.use_mtp ? c.num_mtp_modules : 0),
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: c.num_key_value_heads,
    headDim: c.head_dim,
    rotaryDim: rotaryDimOf(c, fail),
    rmsNormEps: c.rms_norm_eps,
    ropeTheta: ropeThetaOf(c, 5e6, fail),
    vocabSize: c.vocab_size,
    maxPositionEmbeddings: c.max_position_embeddings,
    tieWordEmbeddings: c.tie_word_embeddings,
    numExperts: c.num_local_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    useRoutingBias: c.use_routing_bias,
    raw: json as Record<string, unknown>,
  };
}

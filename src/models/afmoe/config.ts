import { z } from "zod";
import { ConfigError } from "../../errors.js";
import { activationScale, fieldFailure, parseConfigFields, ropeThetaOf } from "../config-fields.js";
import { readConfigJson } from "../../io/json.js";

export type LayerType = "sliding_attention" | "full_attention";

/** AFMoE configuration (config.json), with defaults as in the Hugging Face remote code. */
export interface AfmoeConfig {
  modelType: "afmoe";
  hiddenSize: number;
  intermediateSize: number;
  moeIntermediateSize: number;
  numHiddenLayers: number;
  /** layers with index < numDenseLayers use a dense MLP, the rest MoE (default 0) */
  numDenseLayers: number;
  numAttentionHeads: number;
  /** null in config.json means = numAttentionHeads */
  numKeyValueHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  numExperts: number;
  numExpertsPerTok: number;
  numSharedExperts: number;
  /** default "sigmoid" */
  scoreFunc: "sigmoid" | "softmax";
  /** default true */
  routeNorm: boolean;
  /** default 1.0 */
  routeScale: number;
  slidingWindow: number;
  layerTypes: LayerType[];
  /** default false */
  mupEnabled: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  /** the parsed JSON, kept so that writers can copy it unchanged */
  raw: Record<string, unknown>;
}

/** rope_theta when config.json gives neither rope_theta nor rope_parameters (the remote code's default). */
export const DEFAULT_ROPE_THETA = 10000;

/**
 * Largest sizes accepted from config.json, checked before any module is built: far above every
 * released AFMoE model, far below what would exhaust memory by building the module tree alone.
 */
export const CONFIG_LIMITS = {
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
  num_shared_experts: 64,
  num_dense_layers: 1024,
  sliding_window: 16_777_216,
} as const;

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

const schema = z.object({
  model_type: z.literal("afmoe"),
  hidden_size: posInt,
  intermediate_size: posInt,
  moe_intermediate_size: posInt,
  num_hidden_layers: posInt,
  num_dense_layers: nonNegInt.default(0),
  num_attention_heads: posInt,
  num_key_value_heads: posInt.nullable().optional(),
  head_dim: posInt,
  vocab_size: posInt,
  rms_norm_eps: z.number().positive(),
  rope_theta: z.number().positive().optional(),
  /** transformers >= 5 writes RoPE settings here instead of rope_theta */
  rope_parameters: z.object({ rope_type: z.string().optional(), rope_theta: z.number().positive() }).passthrough().nullable().optional(),
  rope_scaling: z.object({ rope_type: z.string().optional(), type: z.string().optional() }).passthrough().nullable().optional(),
  max_position_embeddings: posInt,
  tie_word_embeddings: z.boolean().default(false),
  num_experts: posInt,
  num_experts_per_tok: posInt,
  num_shared_experts: nonNegInt.default(0),
  score_func: z.enum(["sigmoid", "softmax"]).default("sigmoid"),
  route_norm: z.boolean().default(true),
  route_scale: activationScale.default(1.0),
  n_group: posInt.default(1),
  topk_group: posInt.default(1),
  sliding_window: posInt,
  layer_types: z.array(z.enum(["sliding_attention", "full_attention"])).optional(),
  global_attn_every_n_layers: posInt.optional(),
  mup_enabled: z.boolean().default(false),
  hidden_act: z.literal("silu").default("silu"),
  bos_token_id: nonNegInt.nullable().optional(),
  eos_token_id: z
    .union([nonNegInt, z.array(nonNegInt)])
    .nullable()
    .optional(),
});

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseAfmoeConfig(json: unknown, where = "config.json"): AfmoeConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ConfigError(`${where}: not a JSON object`);
  const mt = (json as { model_type?: unknown }).model_type;
  if (mt !== "afmoe") {
    throw new ConfigError(`${where}: unsupported model_type ${JSON.stringify(mt)} (moecal supports "afmoe")`);
  }
  const c = parseConfigFields(schema, json, where, CONFIG_LIMITS);
  const fail = fieldFailure(where);
  const nKV = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % nKV !== 0) {
    fail("num_key_value_heads", `${nKV} does not divide num_attention_heads ${c.num_attention_heads}`);
  }
  if (c.head_dim % 2 !== 0) fail("head_dim", `${c.head_dim} must be even for RoPE`);
  if (c.num_experts_per_tok > c.num_experts) {
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_experts ${c.num_experts}`);
  }
  if (c.num_dense_layers > c.num_hidden_layers) {
    fail("num_dense_layers", `${c.num_dense_layers} exceeds num_hidden_layers ${c.num_hidden_layers}`);
  }
  const scaling = c.rope_scaling?.rope_type ?? c.rope_scaling?.type ?? "default";
  if (scaling !== "default") fail("rope_scaling", `"${scaling}" RoPE scaling is not supported (only plain RoPE)`);
  const ropeTheta = ropeThetaOf(c, DEFAULT_ROPE_THETA, fail);
  if (c.n_group !== 1 || c.topk_group !== 1) fail("n_group", "grouped expert selection (n_group > 1) is not supported");
  let layerTypes: LayerType[];
  if (c.layer_types) {
    if (c.layer_types.length !== c.num_hidden_layers) {
      fail("layer_types", `has ${c.layer_types.length} entries but num_hidden_layers is ${c.num_hidden_layers}`);
    }
    layerTypes = c.layer_types;
  } else {
    const every = c.global_attn_every_n_layers ?? fail("layer_types", "missing, and global_attn_every_n_layers is not set either");
    layerTypes = Array.from({ length: c.num_hidden_layers }, (_, i) => ((i + 1) % every ? "sliding_attention" : "full_attention"));
  }
  const eos = Array.isArray(c.eos_token_id) ? (c.eos_token_id[0] ?? null) : (c.eos_token_id ?? null);
  return {
    modelType: "afmoe",
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    numDenseLayers: c.num_dense_layers,
    numAttentionHeads: c.num_attention_heads,
    numKeyValueHeads: nKV,
    headDim: c.head_dim,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta,
    maxPositionEmbeddings: c.max_position_embeddings,
    tieWordEmbeddings: c.tie_word_embeddings,
    numExperts: c.num_experts,
    numExpertsPerTok: c.num_experts_per_tok,
    numSharedExperts: c.num_shared_experts,
    scoreFunc: c.score_func,
    routeNorm: c.route_norm,
    routeScale: c.route_scale,
    slidingWindow: c.sliding_window,
    layerTypes,
    mupEnabled: c.mup_enabled,
    bosTokenId: c.bos_token_id ?? null,
    eosTokenId: eos,
    raw: json as Record<string, unknown>,
  };
}

/** Read and validate `<dir>/config.json`. */
export function readAfmoeConfig(dir: string): AfmoeConfig {
  const { file, json } = readConfigJson(dir);
  return parseAfmoeConfig(json, file);
}

export function isMoeLayer(config: AfmoeConfig, layer: number): boolean {
  return layer >= config.numDenseLayers;
}

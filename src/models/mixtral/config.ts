/** Mixtral configuration (config.json), with defaults as in Hugging Face transformers' MixtralConfig. */
import { z } from "zod";
import { ConfigError } from "../../errors.js";
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
  rope_theta: z.number().positive().optional(),
  rope_parameters: z.object({ rope_type: z.string().optional(), rope_theta: z.number().positive() }).passthrough().nullable().optional(),
  rope_scaling: z.null().optional(),
  max_position_embeddings: posInt.default(131072),
  tie_word_embeddings: z.boolean().default(false),
  sliding_window: posInt.nullable().default(null),
  num_local_experts: posInt.default(8),
  num_experts_per_tok: posInt.default(2),
  hidden_act: z.literal("silu").default("silu"),
});

/** Validate a parsed config.json. `where` names the file in errors. */
export function parseMixtralConfig(json: unknown, where = "config.json"): MixtralConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ConfigError(`${where}: not a JSON object`);
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new ConfigError(`${where}: field "${issue?.path.join(".") || "(root)"}": ${issue?.message ?? "invalid"}`);
  }
  const c = r.data;
  for (const [field, max] of Object.entries(MIXTRAL_LIMITS)) {
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
  if (c.num_experts_per_tok > c.num_local_experts)
    fail("num_experts_per_tok", `${c.num_experts_per_tok} exceeds num_local_experts ${c.num_local_experts}`);
  let ropeTheta = c.rope_theta ?? 1e6;
  if (c.rope_parameters) {
    if ((c.rope_parameters.rope_type ?? "default") !== "default")
      fail("rope_parameters.rope_type", `"${c.rope_parameters.rope_type}" is not supported (only "default" RoPE)`);
    if (c.rope_theta !== undefined && c.rope_theta !== c.rope_parameters.rope_theta)
      fail("rope_parameters.rope_theta", `${c.rope_parameters.rope_theta} disagrees with rope_theta ${c.rope_theta}`);
    ropeTheta = c.rope_parameters.rope_theta;
  }
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

/** What every family's config.json parser does the same way: schema errors naming the field, size limits, RoPE theta. */
import { z } from "zod";
import { ConfigError } from "../errors.js";

/**
 * A positive factor that multiplies activations (AFMoE's route_scale, GLM/DeepSeek's
 * routed_scaling_factor): finite in float32, where moecal and the serving kernels compute with it,
 * so a value like 1e308 is refused naming the field instead of turning every output into Inf.
 */
export const activationScale = z.number().positive().max(3.4028234663852886e38, "too large for float32 arithmetic (at most 3.4e38)");

/** Raise a ConfigError naming `field` of the config in `where`. */
export type FieldFailure = (field: string, msg: string) => never;

export function fieldFailure(where: string): FieldFailure {
  return (field, msg) => {
    throw new ConfigError(`${where}: field "${field}": ${msg}`);
  };
}

/**
 * `json` validated by `schema`, then every numeric field named in `limits` checked against its
 * limit (before any module is built). Errors name the file and the field ("missing (required)"
 * when absent).
 */
export function parseConfigFields<S extends z.ZodType>(
  schema: S,
  json: unknown,
  where: string,
  limits: Readonly<Record<string, number>>,
): z.infer<S> {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new ConfigError(`${where}: not a JSON object`);
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue?.path.join(".") || "(root)";
    const top = issue?.path[0];
    const absent = typeof top === "string" && !(top in (json as Record<string, unknown>));
    throw new ConfigError(`${where}: field "${field}": ${absent ? "missing (required)" : (issue?.message ?? "invalid")}`);
  }
  for (const [field, max] of Object.entries(limits)) {
    const v = (r.data as Record<string, unknown>)[field];
    if (typeof v === "number" && v > max) throw new ConfigError(`${where}: field "${field}": ${v} exceeds moecal's limit of ${max}`);
  }
  return r.data;
}

/** RoPE theta from `rope_theta` or transformers 5's `rope_parameters` (which must agree); only default RoPE. */
export function ropeThetaOf(
  c: { rope_theta?: number | undefined; rope_parameters?: { rope_type?: string | undefined; rope_theta: number } | null | undefined },
  fallback: number,
  fail: FieldFailure,
): number {
  const rp = c.rope_parameters;
  if (!rp) return c.rope_theta ?? fallback;
  if ((rp.rope_type ?? "default") !== "default")
    fail("rope_parameters.rope_type", `"${rp.rope_type}" is not supported (only "default" RoPE)`);
  if (c.rope_theta !== undefined && c.rope_theta !== rp.rope_theta)
    fail("rope_parameters.rope_theta", `${rp.rope_theta} disagrees with rope_theta ${c.rope_theta}`);
  return rp.rope_theta;
}

/** RoPE settings as config.json gives them (transformers 5 writes `rope_parameters`; only plain RoPE is supported). */
export const ROPE_FIELDS = {
  rope_theta: z.number().positive().optional(),
  rope_parameters: z.object({ rope_type: z.string().optional(), rope_theta: z.number().positive() }).passthrough().nullable().optional(),
  rope_scaling: z.null().optional(),
};

/** The key/value head count (null: as many as attention heads) and head dim (absent: H / nH), checked for GQA and RoPE. */
export function attentionHeads(
  c: {
    num_attention_heads: number;
    num_key_value_heads?: number | null | undefined;
    head_dim?: number | null | undefined;
    hidden_size: number;
  },
  fail: FieldFailure,
): { nKV: number; headDim: number } {
  const nKV = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % nKV !== 0) fail("num_key_value_heads", `${nKV} does not divide num_attention_heads ${c.num_attention_heads}`);
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) fail("head_dim", `${headDim} must be an even integer for RoPE`);
  return { nKV, headDim };
}

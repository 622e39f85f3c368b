/**
 * What a work folder's manifest.json and state.json hold, their shapes (checked on every read:
 * a damaged file is named, never trusted), and how a run's inputs are identified: every input
 * byte that determines the output (the model's files by content, the tokenizer's files, the
 * dataset, the token ids the calibration reads, the options, moecal's version).
 */
import { createHash } from "node:crypto";
import path from "node:path";
import { z } from "zod";
import { asFormatError } from "../errors.js";
import { entryExists } from "../io/files.js";
import { sha256File } from "../io/hash.js";

export interface WorkManifest {
  moecal_version: string;
  /** the model folder's content hash (config.json, the index and every weight file, as moecal.json records it) */
  model_sha256: string;
  /** file name -> SHA-256 of each tokenizer file present (tokenizer.json, tokenizer_config.json, chat_template.jinja) */
  tokenizer: Record<string, string>;
  dataset_sha256: string;
  /** SHA-256 of the calibration samples' token ids, in order (what the tokenizer, chat template, seed and limits made of the dataset) */
  samples_sha256: string;
  options: Record<string, unknown>;
}

const MANIFEST_SCHEMA = z.strictObject({
  moecal_version: z.string(),
  model_sha256: z.string(),
  tokenizer: z.record(z.string(), z.string()),
  dataset_sha256: z.string(),
  samples_sha256: z.string(),
  options: z.record(z.string(), z.unknown()),
});

const LAYER_REPORT = z.strictObject({
  layer: z.number().int().nonnegative(),
  min_routed: z.number().nullable(),
  median_routed: z.number().nullable(),
  experts_without_rows: z.number(),
  quantized_linears: z.number(),
  fallbacks: z.number(),
  gptq_loss: z.number(),
});

const STATE_SCHEMA = z.strictObject({
  /** the last finished layer (-1: none yet, the state saved inside layer 0 run in expert groups) */
  layer: z.number().int().min(-1),
  layers: z.array(LAYER_REPORT),
  coverage: z.record(z.string(), z.strictObject({ routed: z.array(z.number()), seen: z.array(z.number()) })),
  fallbacks: z.array(
    z.strictObject({
      module: z.string(),
      reason: z.enum(["no-calibration-rows", "cholesky-failed", "no-activation-rows"]),
      action: z.string(),
    }),
  ),
  allTokenFallbacks: z.array(z.string()),
});

/** What the report holds after the last finished layer. */
export type WorkState = z.infer<typeof STATE_SCHEMA>;

/** A data-free run's finished output shards (in the work folder), in order: file name, tensor names as written, file size. */
const SHARDS_SCHEMA = z.strictObject({
  shards: z.array(
    z.strictObject({
      file: z.string().regex(/^shard-\d+\.safetensors$/),
      tensors: z.array(z.string()),
      tensor_bytes: z.number().int().nonnegative(),
      file_bytes: z.number().int().positive(),
    }),
  ),
});

export type ShardState = z.infer<typeof SHARDS_SCHEMA>;

const SCHEMAS = { manifest: MANIFEST_SCHEMA, state: STATE_SCHEMA, shards: SHARDS_SCHEMA };

/** The first problem of a parsed manifest or state, or null when it has the shape moecal writes. */
export function shapeProblem(kind: keyof typeof SCHEMAS, value: unknown): string | null {
  const r = SCHEMAS[kind].safeParse(value);
  if (r.success) return null;
  const issue = r.error.issues[0];
  return `field "${issue?.path.join(".") || "(top)"}": ${issue?.message ?? "invalid"}`;
}

/** A state's own consistency: one report per finished layer, in order. */
export function stateProblem(s: WorkState, layers: number): string | null {
  if (s.layer >= layers) return `it says layer ${s.layer} finished, but the model has ${layers} layers`;
  if (s.layers.length !== s.layer + 1 || s.layers.some((l, i) => l.layer !== i))
    return `it says layer ${s.layer} finished but holds reports of layers [${s.layers.map((l) => l.layer).join(", ")}]`;
  return null;
}

/** The tokenizer files a run reads, by name, with their SHA-256. */
export function tokenizerIdentity(modelDir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"])
    if (entryExists(path.join(modelDir, f))) out[f] = sha256File(path.join(modelDir, f), asFormatError);
  return out;
}

/** SHA-256 of the samples' token ids: each sample's length, then its ids, as little-endian int32. */
export function samplesHash(samples: readonly (readonly number[])[]): string {
  const h = createHash("sha256");
  for (const s of samples) {
    const ids = Int32Array.from([s.length, ...s]);
    h.update(new Uint8Array(ids.buffer));
  }
  return h.digest("hex");
}

/** The manifest fields that differ, named for the user. */
export function differences(a: WorkManifest, b: WorkManifest): string[] {
  const out: string[] = [];
  if (a.moecal_version !== b.moecal_version) out.push(`moecal version (${a.moecal_version} -> ${b.moecal_version})`);
  if (a.model_sha256 !== b.model_sha256) out.push("model weights or config (content hash)");
  for (const f of new Set([...Object.keys(a.tokenizer), ...Object.keys(b.tokenizer)]))
    if (a.tokenizer[f] !== b.tokenizer[f]) out.push(`tokenizer file ${f}`);
  if (a.dataset_sha256 !== b.dataset_sha256) out.push("dataset contents");
  for (const k of new Set([...Object.keys(a.options), ...Object.keys(b.options)]))
    if (JSON.stringify(a.options[k]) !== JSON.stringify(b.options[k]))
      out.push(`option ${k} (${JSON.stringify(a.options[k]) ?? "unset"} -> ${JSON.stringify(b.options[k]) ?? "unset"})`);
  // token ids follow from the above; named only when nothing above explains them
  if (a.samples_sha256 !== b.samples_sha256 && out.length === 0) out.push("calibration token ids");
  return out;
}

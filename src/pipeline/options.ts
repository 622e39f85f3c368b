/**
 * The options of every public function, as one set of zod schemas checked at run time: a plain-JS
 * caller's wrong type, unknown key (a typo) or out-of-range value is a UsageError naming the
 * function and the option, never a silent default, a raw TypeError or a checkpoint moecal rejects.
 */
import { z } from "zod";
import { UsageError } from "../errors.js";

/** A path (its meaning, even "", is checked where it is used: "" is the current folder, which no output may be). */
const path = z.string();
const count = z.number().int().min(1);
const flag = z.boolean();
const callback = z.custom<(...args: never[]) => unknown>((v) => typeof v === "function", "expected a function");
const seed = z.union([z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), z.bigint().nonnegative()]);
/** Output shards: at least 1 MiB (a smaller limit writes a shard per tensor). */
const shardBytes = z
  .number()
  .int()
  .min(1024 ** 2);

export const ONESHOT_OPTIONS = z.strictObject({
  model: path.optional(),
  dataset: path.optional(),
  scheme: z
    .union([z.string(), z.array(z.string()).min(1)], {
      error: "expected string (a scheme) or a non-empty array of strings (SCHEME or PATTERN=SCHEME)",
    })
    .optional(),
  method: z
    .union([z.enum(["gptq", "rtn"]), z.array(z.string()).min(1)], {
      error: 'expected "gptq" or "rtn", or a non-empty array of strings (METHOD or PATTERN=METHOD)',
    })
    .optional(),
  recipe: path.optional(),
  groupSize: count.optional(),
  numSamples: count.optional(),
  maxSeqLength: z.number().int().min(2).optional(),
  calibrateAllExperts: flag.optional(),
  fastPath: flag.optional(),
  expertStatistics: z.string().optional(),
  routedWeight: z.string().optional(),
  ignore: z.array(z.string()).optional(),
  vllmCheck: flag.optional(),
  seed: seed.optional(),
  output: path.optional(),
  overwrite: flag.optional(),
  actorder: z.literal("static").nullable().optional(),
  /** GPTQ's dampening fraction of the mean Hessian diagonal (llm-compressor's dampening_frac) */
  dampening: z.number().gt(0).lte(1).optional(),
  maxShardBytes: shardBytes.optional(),
  onProgress: callback.optional(),
  restart: flag.optional(),
  maxMemory: z.number().int().positive().optional(),
  expertGroupSize: count.optional(),
  /** tokens per calibration shard (whole samples): the order the non-expert statistics are summed in, and a distributed run's token-shard job */
  shardTokens: count.optional(),
  onCheckpoint: callback.optional(),
  warn: callback.optional(),
  calibrate: flag.optional(),
  workers: z.number().int().min(0).max(1024).optional(),
  nats: z
    .strictObject({
      url: z.string().min(1),
      creds: path.optional(),
      tlsCa: path.optional(),
      tlsCert: path.optional(),
      tlsKey: path.optional(),
      jobTimeout: count.optional(),
    })
    .optional(),
});

/** runWorker's options (distributed/worker.ts). */
export const WORKER_OPTIONS = z.strictObject({
  nats: ONESHOT_OPTIONS.shape.nats.unwrap().omit({ jobTimeout: true }),
  sharedDir: z.string().min(1),
  workers: z.number().int().min(0).max(1024).optional(),
  onEvent: callback.optional(),
  warn: callback.optional(),
});

export const EVAL_OPTIONS = z.strictObject({
  model: path,
  reference: z.union([path, z.custom<object>((v) => typeof v === "object" && v !== null, "expected reference logits")]).optional(),
  dataset: path,
  numSamples: count.optional(),
  maxSeqLength: z.number().int().min(2).optional(),
  chunkTokens: count.optional(),
  onProgress: callback.optional(),
});

export const COVERAGE_OPTIONS = z.strictObject({
  model: path,
  dataset: path,
  numSamples: count.optional(),
  maxSeqLength: z.number().int().min(2).optional(),
  calibrateAllExperts: flag.optional(),
  onProgress: callback.optional(),
});

export const FORWARD_OPTIONS = z.strictObject({ model: path, inputIds: path, output: path });

export const RANDOM_MODEL_OPTIONS = z.strictObject({
  output: path,
  like: path.optional(),
  family: z.string().optional(),
  set: z.array(z.string()).optional(),
  layers: count.optional(),
  seed: z.number().int().nonnegative().optional(),
  overwrite: flag.optional(),
  maxShardBytes: shardBytes.optional(),
  fp8Block: z.number().int().min(1).max(65536).optional(),
});

export const SAMPLE_OPTIONS = z.strictObject({
  numSamples: count.optional(),
  maxSeqLength: z.number().int().min(1),
  shuffleSeed: seed.nullable().optional(),
});

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") return `${typeof v} ${String(v)}`;
  return typeof v;
}

/** `value` checked against `schema`; the first problem is a UsageError naming `fn` and the option. */
export function checkOptions<S extends z.ZodType>(fn: string, schema: S, value: unknown): z.infer<S> {
  if (value === undefined) value = {};
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new UsageError(`${fn}: options must be an object, got ${describe(value)}`);
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0] as z.core.$ZodIssue;
  if (issue.code === "unrecognized_keys") {
    const known = schema instanceof z.ZodObject ? Object.keys(schema.shape).join(", ") : "";
    throw new UsageError(`${fn}: unknown option ${issue.keys.map((k) => JSON.stringify(k)).join(", ")} (known: ${known})`);
  }
  const name = issue.path.map(String).join(".");
  const given = issue.path.reduce<unknown>((o, k) => (o as Record<PropertyKey, unknown> | undefined)?.[k as PropertyKey], value);
  throw new UsageError(`${fn}: option "${name}": ${issue.message} (got ${describe(given)})`);
}

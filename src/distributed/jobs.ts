/**
 * A job on the queue, and the keys its outcome is put under. Each names its run and layer, and one
 * of a layer's work units: a token shard of its non-expert part in one phase (token-shards.ts), the
 * expert group [first, end) (group `group` of `size`), or the GPTQ of a non-expert Linear (gptq-jobs.ts). Its result is files in the run's work
 * folder named by the unit, so a job done twice (redelivered) writes the same bytes to the same
 * names and cannot count twice.
 */
import { z } from "zod";

const RUN = z.string().regex(/^[0-9a-f]{16}$/);
const index = z.number().int().nonnegative();

const GROUP_JOB = z.strictObject({
  kind: z.literal("group"),
  run: RUN,
  layer: index,
  group: index,
  first: index,
  end: z.number().int().positive(),
  size: z.number().int().positive(),
  /** also write the group's routed rows over the layer's propagation calls (every layer but the last) */
  sums: z.boolean(),
  /** the layer's calls are in this many token-shard files (0: one file) */
  shards: index,
});

const SHARD_JOB = z.strictObject({
  kind: z.literal("shard"),
  run: RUN,
  layer: index,
  phase: z.enum(["calibrate", "propagate", "output"]),
  shard: index,
  /** tokens before the shard's first sample */
  offset: index,
  /** its samples' lengths */
  lengths: z.array(z.number().int().positive()).min(1),
  /** output phase: the sums file of `done` groups, the shard's first call at byte `at` */
  routed: z.strictObject({ done: index, at: index }).optional(),
  /** output phase: the coordinator session whose outputs file (layer-inputs.ts slotsFileOf) it writes into */
  slots: z
    .string()
    .regex(/^[0-9a-f]{12}$/)
    .optional(),
});

const GPTQ_JOB = z.strictObject({
  kind: z.literal("gptq"),
  run: RUN,
  layer: index,
  /** the job's number in the layer (its files: gptq-jobs.ts) */
  n: index,
  /** the Linear quantized (its scheme is the worker's run's) */
  linear: z.string().min(1),
});

const JOB = z.discriminatedUnion("kind", [GROUP_JOB, SHARD_JOB, GPTQ_JOB]);

export type JobMessage = z.infer<typeof JOB>;

/** The job a message holds, or null when it is not one this version reads. */
export function parseJob(data: string): JobMessage | null {
  try {
    const r = JOB.safeParse(JSON.parse(data));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

/**
 * A job's last key token, unique in its layer: a group's number and experts (`g2-16-24`: groups of
 * another size, a run resumed with other groups, never answer for it), a shard's phase and number (`calibrate-3`; an
 * output shard's also its coordinator's session, whose outputs file it writes into), a GPTQ job's number (`q2`).
 */
export function jobToken(j: JobMessage): string {
  if (j.kind === "group") return `g${j.group}-${j.first}-${j.end}`;
  if (j.kind === "gptq") return `q${j.n}`;
  return `${j.phase}-${j.shard}${j.slots ? `-${j.slots}` : ""}`;
}

/** What a job does, in words (progress and errors). */
export function jobLabel(j: JobMessage): string {
  if (j.kind === "group") return `expert group ${j.group} (experts ${j.first}-${j.end - 1})`;
  if (j.kind === "gptq") return `GPTQ of ${j.linear}`;
  return `token shard ${j.shard} (${j.phase})`;
}

/** Set by the worker once the job's files are written: { worker, seconds }. */
export const doneKey = (run: string, layer: number, token: string): string => `${run}.done.${layer}.${token}`;
/** Set by the worker when the job failed: { worker, code, message }; the coordinator stops the run with it. */
export const failedKey = (run: string, layer: number, token: string): string => `${run}.failed.${layer}.${token}`;

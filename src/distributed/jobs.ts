/**
 * A job on the queue, and the keys its outcome is put under. A group job names its run, layer and
 * experts [first, end) (group `group` of `size`); its result is the group's files in the run's work
 * folder (its tensors, its result, and but in the last layer its routed rows), named by the group,
 * so a job done twice (redelivered) writes the same bytes to the same names and cannot count twice.
 */
import { z } from "zod";

const GROUP_JOB = z.strictObject({
  run: z.string().regex(/^[0-9a-f]{16}$/),
  layer: z.number().int().nonnegative(),
  group: z.number().int().nonnegative(),
  first: z.number().int().nonnegative(),
  end: z.number().int().positive(),
  size: z.number().int().positive(),
  /** also write the group's routed rows over the layer's propagation calls (every layer but the last) */
  sums: z.boolean(),
});

export type GroupJobMessage = z.infer<typeof GROUP_JOB>;

/** The job a message holds, or null when it is not one this version reads. */
export function parseJob(data: string): GroupJobMessage | null {
  try {
    const r = GROUP_JOB.safeParse(JSON.parse(data));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

/** A group's last key token: its number and experts (`2-16-24`), so that groups of another size (a run resumed with other groups) never answer for it. */
export const groupToken = (s: { group: number; first: number; end: number }): string => `${s.group}-${s.first}-${s.end}`;
/** Set by the worker once the group's files are written: { worker, seconds }. */
export const doneKey = (run: string, layer: number, s: { group: number; first: number; end: number }): string =>
  `${run}.done.${layer}.${groupToken(s)}`;
/** Set by the worker when the job failed: { worker, code, message }; the coordinator stops the run with it. */
export const failedKey = (run: string, layer: number, s: { group: number; first: number; end: number }): string =>
  `${run}.failed.${layer}.${groupToken(s)}`;

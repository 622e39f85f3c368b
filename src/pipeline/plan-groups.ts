/**
 * The plan of an MoE layer run in expert groups (expert-groups.ts): what one routed expert adds to
 * the layer's peak (its weights in float32 and as read, its Hessians, its codes), and the largest
 * group of experts that keeps the layer under the memory the run may use.
 */
import type { LayerPlan } from "./plan.js";

export interface ExpertGroups {
  /** experts per group (the last group may hold fewer) */
  size: number;
  groups: number;
  /** the layer's peak memory run whole, for comparison */
  whole_peak_memory_bytes: number;
}

/** What one routed expert adds to a layer's memory, by part. */
export interface PerExpert {
  parameters: number;
  hessians: number;
  outputs: number;
}

/**
 * Decide whether layer `l` (E routed experts) runs in groups and of what size: `expertGroupSize`
 * when given (below E), else the whole layer when it fits in `maxMemory`, else the largest group that
 * fits (1 when none does: the plan check then refuses the run, naming the layer). A grouped layer's
 * memory holds `size` experts' parts instead of E, plus the streamed calls it reads and writes.
 */
export function planExpertGroups(
  l: LayerPlan,
  E: number,
  per: PerExpert,
  streamBytes: number,
  limits: { maxMemory: number; expertGroupSize?: number },
): void {
  const perExpert = per.parameters + per.hessians + per.outputs;
  const peakOf = (g: number): number => l.peak_memory_bytes - (E - g) * perExpert + streamBytes;
  let size: number;
  if (limits.expertGroupSize !== undefined) size = Math.min(E, limits.expertGroupSize);
  else if (l.peak_memory_bytes <= limits.maxMemory) size = E;
  else size = Math.max(1, Math.min(E - 1, Math.floor((limits.maxMemory - peakOf(0)) / Math.max(1, perExpert))));
  if (size >= E) return;
  const whole = l.peak_memory_bytes;
  const fewer = E - size;
  l.memory.parameters -= fewer * per.parameters;
  l.memory.hessians -= fewer * per.hessians;
  l.memory.outputs -= fewer * per.outputs;
  l.memory.hidden_states += streamBytes;
  l.peak_memory_bytes = peakOf(size);
  l.expert_groups = { size, groups: Math.ceil(E / size), whole_peak_memory_bytes: whole };
}

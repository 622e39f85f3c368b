/**
 * The plan of an MoE layer run in expert groups (expert-groups.ts). Such a layer has two phases:
 * the non-expert part (its weights, Hessians and GPTQ), then one group of routed experts at a time
 * beside the quantized non-expert weights (the group's weights, Hessians, codes and output tensors,
 * the gate/up Gram product the experts share, GPTQ at the experts' widths, the streamed calls).
 * Its peak is the larger phase's; the group size is the largest whose phase fits the memory limit.
 */
import type { LayerPlan } from "./plan-types.js";

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
  /** its bytes as read and as written (not memory: what a distributed run moves) */
  read: number;
  write: number;
}

/** A layer's routed experts as the plan counts them. */
export interface ExpertsOfLayer {
  count: number;
  per: PerExpert;
  /** Hessian bytes the experts share (the all-token gate/up Gram product) */
  shared: number;
  /** GPTQ's scratch at the widest non-expert Linear and at the widest expert Linear */
  gptq: { nonExpert: number; expert: number };
  /** the streamed calls a group reads and writes, a batch at a time */
  stream: number;
}

type Memory = LayerPlan["memory"];

const total = (m: Memory): number => Object.values(m).reduce((a, b) => a + b, 0);

/**
 * Decide whether layer `l` runs in expert groups and of what size: `expertGroupSize` when given
 * (below the expert count), else whole when it fits in `maxMemory`, else the largest group that
 * fits (1 when none does: the plan check then refuses the run, naming the layer). A grouped layer's
 * memory and peak become those of its larger phase.
 */
export function planExpertGroups(l: LayerPlan, x: ExpertsOfLayer, limits: { maxMemory: number; expertGroupSize?: number }): void {
  const E = x.count;
  const m = l.memory;
  const baseline = l.peak_memory_bytes - total(m);
  const nonExpert = {
    parameters: m.parameters - E * x.per.parameters,
    hessians: m.hessians - E * x.per.hessians - x.shared,
    outputs: m.outputs - E * x.per.outputs,
  };
  const first: Memory = { ...m, ...nonExpert, gptq: x.gptq.nonExpert, hidden_states: m.hidden_states + x.stream };
  const group = (g: number): Memory => ({
    ...first,
    parameters: nonExpert.parameters + g * x.per.parameters,
    hessians: x.shared + g * x.per.hessians,
    outputs: nonExpert.outputs + g * x.per.outputs,
    gptq: x.gptq.expert,
  });
  const peakOf = (g: number): number => baseline + Math.max(total(first), total(group(g)));
  let size = E;
  if (limits.expertGroupSize !== undefined) size = Math.min(E, limits.expertGroupSize);
  else if (l.peak_memory_bytes > limits.maxMemory) {
    size = 1;
    while (size + 1 < E && peakOf(size + 1) <= limits.maxMemory) size++;
  }
  if (size >= E) return;
  const whole = l.peak_memory_bytes;
  l.memory = total(first) > total(group(size)) ? first : group(size);
  l.peak_memory_bytes = peakOf(size);
  l.expert_groups = { size, groups: Math.ceil(E / size), whole_peak_memory_bytes: whole };
}

/**
 * A grouped layer's last group is still in memory (unloaded, not yet collected) when the next layer
 * starts (the plan's `retained`): where that pushes the next layer over `maxMemory`, the group is
 * made smaller, down to one expert, and the next layer's retained weights with it.
 */
export function fitRetainedGroups(
  layers: LayerPlan[],
  grouped: ReadonlyMap<number, { whole: LayerPlan; x: ExpertsOfLayer }>,
  maxMemory: number,
): void {
  for (const [i, { whole, x }] of grouped) {
    const l = layers[i];
    const next = layers[i + 1];
    if (!l?.expert_groups || !next || next.peak_memory_bytes <= maxMemory || x.per.parameters <= 0) continue;
    const fewer = Math.min(l.expert_groups.size - 1, Math.ceil((next.peak_memory_bytes - maxMemory) / x.per.parameters));
    if (fewer <= 0) continue;
    const smaller = structuredClone(whole);
    planExpertGroups(smaller, x, { maxMemory, expertGroupSize: l.expert_groups.size - fewer });
    layers[i] = smaller;
    next.memory.retained -= fewer * x.per.parameters;
    next.peak_memory_bytes -= fewer * x.per.parameters;
  }
}

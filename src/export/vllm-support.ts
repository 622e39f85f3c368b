/**
 * Whether vLLM's compressed-tensors loader can serve a scheme on a model's shapes, as its code
 * decides (read at vllm-project/vllm 8a95a68: compressed_tensors_moe/compressed_tensors_moe.py
 * `get_moe_method`; quantization/utils/marlin_utils.py `check_moe_marlin_supports_layer`;
 * quantization/utils/fp8_utils.py `validate_fp8_block_shape`). Each message names the module,
 * what vLLM would do and why.
 */
import type { Scheme } from "../quantization/scheme.js";

/** What vLLM's kernel choice reads of a scheme. */
export type ServedScheme = Pick<Scheme, "weights" | "inputActivations">;
import type { CausalLM } from "../models/family.js";
import type { FusedGroup } from "../models/fused.js";
import type { Linear } from "../nn/layers.js";

/** One fused MoE module: its name and the shapes of one expert. */
export interface ExpertShape {
  module: string;
  hidden: number;
  intermediate: number;
}

/** Marlin MoE: group -1, 32, 64 or 128; hidden % 128 == 0; intermediate % max(64, group) == 0. */
function marlinMoeRefuses(e: ExpertShape, group: number): string | null {
  if (![-1, 32, 64, 128].includes(group)) return `group size ${group} (Marlin MoE takes 32, 64, 128 or per channel)`;
  if (e.hidden % 128 !== 0) return `hidden size ${e.hidden} (Marlin MoE needs a multiple of 128)`;
  if (e.intermediate % Math.max(64, group) !== 0)
    return `expert intermediate size ${e.intermediate} (Marlin MoE needs a multiple of ${Math.max(64, group)})`;
  return null;
}

/**
 * Problems vLLM would have serving `scheme`: routed experts (per fused MoE module) and the other
 * quantized Linears (`dense`: [name, out, in]). Empty when vLLM loads it with its usual kernels.
 */
export function vllmServingProblems(
  scheme: ServedScheme,
  experts: readonly ExpertShape[],
  dense: readonly [string, number, number][],
): string[] {
  const w = scheme.weights;
  const problems: string[] = [];
  for (const e of experts) {
    if (w.type === "int" && !scheme.inputActivations) {
      const why = marlinMoeRefuses(e, w.strategy === "group" ? (w.groupSize ?? -1) : -1);
      if (why && !w.symmetric)
        problems.push(
          `${e.module}: vLLM serves asymmetric int experts only with its Marlin MoE kernel, which refuses ${why}; vLLM would not load it`,
        );
      else if (why)
        problems.push(`${e.module}: vLLM's Marlin MoE kernel refuses ${why}; vLLM falls back to its slower Triton WNA16 MoE kernel`);
    }
    if (w.strategy === "block") {
      const [bn, bk] = w.blockStructure ?? [128, 128];
      if (e.intermediate % bn !== 0 || e.hidden % bk !== 0)
        problems.push(
          `${e.module}: vLLM's FP8 block MoE needs the expert intermediate size (${e.intermediate}) and hidden size (${e.hidden}) to be multiples of ${bn}; vLLM would not load it`,
        );
    }
    if (w.strategy === "tensor_group" && (e.hidden % 16 !== 0 || e.intermediate % 16 !== 0))
      problems.push(`${e.module}: NVFP4 needs hidden (${e.hidden}) and intermediate (${e.intermediate}) sizes that are multiples of 16`);
  }
  if (w.strategy === "block") {
    const [bn, bk] = w.blockStructure ?? [128, 128];
    for (const [name, out, inF] of dense)
      if (out % bn !== 0 || inF % bk !== 0)
        problems.push(`${name}: [${out}, ${inF}] is not a multiple of FP8 blocks of [${bn}, ${bk}]; vLLM would not load it`);
  }
  return problems;
}

/** The shapes vLLM checks: one expert of each quantized fused MoE module, and every other quantized Linear. */
function servedShapes(
  model: CausalLM,
  groups: readonly FusedGroup[],
  targets: ReadonlySet<string>,
): [ExpertShape[], [string, number, number][]] {
  const linear = (n: string): Linear => model.getSubmodule(n) as Linear;
  const moe = groups.filter((g) => g.weights && g.members.every((m) => targets.has(m)));
  const inMoe = new Set(moe.flatMap((g) => g.members));
  const experts = moe.map((g) => {
    const gate = linear(g.members[0] as string);
    return { module: g.module, hidden: gate.inFeatures, intermediate: gate.outFeatures };
  });
  const dense = [...targets]
    .filter((n) => !inMoe.has(n))
    .map((n) => [n, linear(n).outFeatures, linear(n).inFeatures] as [string, number, number]);
  return [experts, dense];
}

/**
 * What vLLM would make of a quantized model (oneshot warns before its work, inspect reports after):
 * the quantized Linears (`linears`) partitioned by the scheme `schemeOf` gives each (null:
 * unquantized), each part judged by `vllmServingProblems`.
 */
export function servingProblems(
  model: CausalLM,
  fused: readonly FusedGroup[],
  linears: readonly string[],
  schemeOf: (linear: string) => ServedScheme | null,
): string[] {
  const parts = new Map<ServedScheme, Set<string>>();
  for (const n of linears) {
    const s = schemeOf(n);
    if (!s) continue;
    const part = parts.get(s) ?? new Set<string>();
    part.add(n);
    parts.set(s, part);
  }
  return [...parts].flatMap(([scheme, targets]) => vllmServingProblems(scheme, ...servedShapes(model, fused, targets)));
}

/**
 * Quantization defaults for AFMoE: the Linear layers never quantized, and the groups of Linear
 * layers that vLLM runs as one module.
 */

/** Never quantized: vLLM keeps the router gate in float32; lm_head stays in the checkpoint dtype, as in published Trinity quantizations. */
export const AFMOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.router\\.gate$"];

import { type FusedGroup, append, byShardOrder } from "../fused.js";

/**
 * vLLM's AFMoE (`AfmoeForCausalLM`) fuses q/k/v into `qkv_proj`, a dense MLP's and the shared
 * expert's gate/up into `gate_up_proj`, and all routed experts of a layer into one fused MoE module
 * whose scheme it reads from expert 0. The attention output gate (`self_attn.gate_proj`), `o_proj`
 * and the down projections stay separate modules.
 */
export function afmoeFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const groups = new Map<string, string[]>();
  for (const n of linearNames) {
    const attn = n.match(/^(.*\.self_attn)\.[qkv]_proj$/);
    const experts = attn ? null : n.match(/^(.*\.mlp\.experts)\.\d+\.(gate|up|down)_proj$/);
    const gateUp = attn || experts ? null : n.match(/^(.*\.mlp(\.shared_experts)?)\.(gate|up)_proj$/);
    if (attn) append(groups, `${attn[1]}.qkv_proj`, n);
    else if (experts) append(groups, experts[1] as string, n);
    else if (gateUp) append(groups, `${gateUp[1]}.gate_up_proj`, n);
  }
  return [...groups]
    .filter(([, members]) => members.length > 1)
    .map(([module, members]) => ({ module, members: members.sort(byShardOrder) }));
}

/**
 * Quantization defaults for AFMoE: the Linear layers never quantized, and the groups of Linear
 * layers that vLLM runs as one module.
 */

/** Never quantized: vLLM keeps the router gate in float32; lm_head stays in the checkpoint dtype, as in published Trinity quantizations. */
export const AFMOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.router\\.gate$"];

import { type FusedGroup, hfFusedGroups } from "../fused.js";

/**
 * vLLM's AFMoE (`AfmoeForCausalLM`) fuses q/k/v into `qkv_proj`, a dense MLP's and the shared
 * expert's gate/up into `gate_up_proj`, and all routed experts of a layer into one fused MoE module
 * whose scheme it reads from expert 0. The attention output gate (`self_attn.gate_proj`), `o_proj`
 * and the down projections stay separate modules.
 */
export function afmoeFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  return hfFusedGroups(linearNames);
}

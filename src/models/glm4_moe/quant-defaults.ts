/**
 * Quantization defaults for GLM-4.5 MoE: the Linear layers never quantized, and the groups of
 * Linear layers that vLLM runs as one module (vllm/model_executor/models/glm4_moe.py).
 */
import { type FusedGroup, hfFusedGroups } from "../fused.js";

/** Never quantized: vLLM keeps the router `mlp.gate` (and its e_score_correction_bias) in float32. */
export const GLM4_MOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.gate$"];

/** q/k/v into `qkv_proj`; dense and shared-expert gate/up into `gate_up_proj`; all routed experts of a layer into one fused MoE module. */
export function glm4MoeFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  return hfFusedGroups(linearNames);
}

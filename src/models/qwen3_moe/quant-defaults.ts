/**
 * Quantization defaults for Qwen3-MoE: the Linear layers never quantized, and the groups of Linear
 * layers that vLLM runs as one module (vllm/model_executor/models/qwen3_moe.py).
 */
import { type FusedGroup, hfFusedGroups } from "../fused.js";

/** Never quantized: vLLM builds the router `mlp.gate` without a quantization config (never an expert's gate_proj). */
export const QWEN3_MOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.gate$"];

/** q/k/v into `qkv_proj`; a dense MLP's gate/up into `gate_up_proj`; all experts of a layer into one fused MoE module. */
export function qwen3MoeFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  return hfFusedGroups(linearNames);
}

/**
 * Quantization defaults for Qwen3-MoE: the Linear layers never quantized, and the groups of Linear
 * layers that vLLM runs as one module (vllm/model_executor/models/qwen3_moe.py).
 */
import { type FusedGroup, append, byShardOrder } from "../fused.js";

/** Never quantized: vLLM builds the router `mlp.gate` without a quantization config (never an expert's gate_proj). */
export const QWEN3_MOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.gate$"];

/** q/k/v into `qkv_proj`; a dense MLP's gate/up into `gate_up_proj`; all experts of a layer into one fused MoE module. */
export function qwen3MoeFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const groups = new Map<string, string[]>();
  for (const n of linearNames) {
    const attn = n.match(/^(.*\.self_attn)\.[qkv]_proj$/);
    const experts = attn ? null : n.match(/^(.*\.mlp\.experts)\.\d+\.(gate|up|down)_proj$/);
    const gateUp = attn || experts ? null : n.match(/^(.*\.mlp)\.(gate|up)_proj$/);
    if (attn) append(groups, `${attn[1]}.qkv_proj`, n);
    else if (experts) append(groups, experts[1] as string, n);
    else if (gateUp) append(groups, `${gateUp[1]}.gate_up_proj`, n);
  }
  return [...groups]
    .filter(([, members]) => members.length > 1)
    .map(([module, members]) => ({ module, members: members.sort(byShardOrder) }));
}

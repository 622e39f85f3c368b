/**
 * Quantization defaults for Qwen3-Next and Qwen3.5-MoE: the Linear layers never quantized, and the
 * groups of Linear layers that vLLM runs as one module (vllm/model_executor/models/qwen3_next.py at
 * 002d6073, qwen3_5.py at 00def4f8).
 */
import { type FusedGroup, append, hfFusedGroups } from "../fused.js";

/**
 * Never quantized: the router `mlp.gate` and `mlp.shared_expert_gate` (ReplicatedLinear without a
 * quant config in vLLM), and the linear attention's b/a projections (vLLM versions differ on
 * quantizing `in_proj_ba`; unquantized loads in all of them).
 */
export const QWEN3_NEXT_DEFAULT_IGNORE: readonly string[] = [
  "lm_head",
  "re:.*mlp\\.gate$",
  "re:.*mlp\\.shared_expert_gate$",
  "re:.*linear_attn\\.in_proj_(ba|b|a)$",
];

/**
 * q/k/v (`q_proj` with its gate half) into `qkv_proj`; dense and shared-expert gate/up into
 * `gate_up_proj`; each layer's routed experts into one FusedMoE; Qwen3.5's `in_proj_qkv` +
 * `in_proj_z` into `in_proj_qkvz`.
 */
export function qwen3NextFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const groups = hfFusedGroups(linearNames);
  const qkvz = new Map<string, string[]>();
  for (const n of linearNames) {
    const m = n.match(/^(.*\.linear_attn)\.in_proj_(qkv|z)$/);
    if (m) append(qkvz, `${m[1]}.in_proj_qkvz`, n);
  }
  for (const [module, members] of qkvz)
    if (members.length === 2) groups.push({ module, members: members.sort((a, b) => Number(a.endsWith("_z")) - Number(b.endsWith("_z"))) });
  return groups;
}

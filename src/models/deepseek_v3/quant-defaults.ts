/**
 * Quantization defaults for DeepSeek-V3 / Kimi-K2: the Linear layers never quantized, and the
 * groups of Linear layers that vLLM runs as one module (vllm/model_executor/models/deepseek_v2.py
 * at 002d6073: packed_modules_mapping, mla_params_mapping, make_expert_params_mapping).
 */
import { type FusedGroup, byShardOrder, hfFusedGroups } from "../fused.js";

/** Never quantized: vLLM keeps the router `mlp.gate` (a GateLinear, with its float32 correction bias) unquantized. */
export const DEEPSEEK_V3_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.gate$"];

/**
 * Dense and shared-expert gate/up (`gate_up_proj`), each layer's routed experts, and MLA's
 * `fused_qkv_a_proj` = q_a_proj + kv_a_proj_with_mqa (only with query compression: a q_proj
 * loads alone).
 */
export function deepseekV3FusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const qkvA = new Map<string, string[]>();
  for (const n of linearNames) {
    const m = n.match(/^(.*\.self_attn)\.(q_a_proj|kv_a_proj_with_mqa)$/);
    if (m) qkvA.set(m[1] as string, [...(qkvA.get(m[1] as string) ?? []), n]);
  }
  const mla = [...qkvA]
    .filter(([, members]) => members.length === 2)
    .map(([attn, members]) => ({ module: `${attn}.fused_qkv_a_proj`, members: members.sort(byShardOrder) }));
  return [...mla, ...hfFusedGroups(linearNames)];
}

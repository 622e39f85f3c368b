/**
 * Quantization defaults for Mixtral: the Linear layers never quantized, and the groups of Linear
 * layers that vLLM runs as one module (vllm/model_executor/models/mixtral.py).
 */
import { type FusedGroup, append, expertWeights } from "../fused.js";

/** Never quantized: vLLM builds the router `block_sparse_moe.gate` without a quantization config. */
export const MIXTRAL_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*block_sparse_moe\\.gate$"];

const W_ORDER = ["w1", "w3", "w2"];
const QKV_ORDER = ["q_proj", "k_proj", "v_proj"];
/** vLLM's order: q, k, v; experts by index, then w1 (gate), w3 (up), w2 (down). */
function byMixtralOrder(a: string, b: string): number {
  const key = (n: string): [number, number, string] => {
    const m = n.match(/\.experts\.(\d+)\.(w[123])$/);
    return m ? [Number(m[1]), W_ORDER.indexOf(m[2] as string), ""] : [-1, QKV_ORDER.indexOf(n.slice(n.lastIndexOf(".") + 1)), n];
  };
  const [ea, wa, na] = key(a);
  const [eb, wb, nb] = key(b);
  return ea - eb || wa - wb || (na < nb ? -1 : na > nb ? 1 : 0);
}

/** q/k/v into `qkv_proj`; all experts of a layer into one fused MoE module (no dense MLP exists). */
export function mixtralFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const groups = new Map<string, string[]>();
  for (const n of linearNames) {
    const attn = n.match(/^(.*\.self_attn)\.[qkv]_proj$/);
    const experts = attn ? null : n.match(/^(.*\.block_sparse_moe\.experts)\.\d+\.w[123]$/);
    if (attn) append(groups, `${attn[1]}.qkv_proj`, n);
    else if (experts) append(groups, experts[1] as string, n);
  }
  return [...groups]
    .filter(([, members]) => members.length > 1)
    .map(([module, members]) => ({
      module,
      members: members.sort(byMixtralOrder),
      ...(module.endsWith(".experts") ? { weights: expertWeights(members, (m) => m.endsWith(".w2")) } : {}),
    }));
}

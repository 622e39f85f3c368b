/** Linear layers that vLLM runs as one module (one quantization scheme), whatever the family. */

/** Linear layers that vLLM loads into one module, which holds one quantization scheme. */
export interface FusedGroup {
  /** vLLM's name for the fused module */
  module: string;
  /** the checkpoint's Linear names it is made of */
  members: string[];
  /**
   * the member sets vLLM concatenates into one weight tensor, each of which carries one NVFP4
   * global scale (default: all members); a fused MoE module: per expert gate+up, and down alone
   */
  weights?: string[][];
}

/** Every member set that vLLM runs as one weight tensor. */
export function oneWeightSets(groups: readonly FusedGroup[]): string[][] {
  return groups.flatMap((g) => g.weights ?? [g.members]);
}

/** A fused MoE module's weights: per expert (by the index after `.experts.`), the up side (`isDown` false) and the down side. */
export function expertWeights(members: readonly string[], isDown: (member: string) => boolean): string[][] {
  const byExpert = new Map<string, string[]>();
  for (const m of members) append(byExpert, `${/\.experts\.(\d+)\./.exec(m)?.[1]}:${isDown(m)}`, m);
  return [...byExpert.values()];
}

export function append(map: Map<string, string[]>, key: string, value: string): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

const PROJ_ORDER = ["q_a_proj", "kv_a_proj_with_mqa", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"];
/** vLLM's shard order: q, k, v (MLA: q_a, kv_a); gate, up; experts by index, then gate, up, down. */
export function byShardOrder(a: string, b: string): number {
  const key = (n: string): [number, number] => {
    const m = n.match(/\.(\d+)\.[a-z]+_proj$/);
    return [m ? Number(m[1]) : -1, PROJ_ORDER.indexOf(n.slice(n.lastIndexOf(".") + 1))];
  };
  const [ea, pa] = key(a);
  const [eb, pb] = key(b);
  return ea - eb || pa - pb;
}

/** Short member names within a group's parent: "k_proj", "experts.3.down_proj". */
function shortName(group: FusedGroup, member: string): string {
  const parent = group.module.replace(/\.(qkv_proj|gate_up_proj|fused_qkv_a_proj)$/, "");
  const rel = member.startsWith(`${parent}.`) ? member.slice(parent.length + 1) : member;
  return group.module.endsWith(".experts") ? `experts.${rel}` : rel;
}

function listSome(names: string[], max = 4): string {
  return names.length <= max ? names.join(", ") : `${names.slice(0, max).join(", ")} and ${names.length - max} more`;
}

/**
 * The fused groups whose members would not share one scheme, each as a message naming the module
 * and which members carry which scheme. `schemeOf` names a Linear's scheme ("unquantized" for an
 * ignored one); an empty result means vLLM can load the layout.
 */
export function fusedSchemeConflicts(groups: readonly FusedGroup[], schemeOf: (linear: string) => string): string[] {
  const out: string[] = [];
  for (const g of groups) {
    const byScheme = new Map<string, string[]>();
    for (const m of g.members) append(byScheme, schemeOf(m), shortName(g, m));
    if (byScheme.size < 2) continue;
    const what = g.module.endsWith(".experts")
      ? `runs its ${g.members.length} routed-expert Linear layers as one fused MoE module`
      : `fuses ${g.members.map((m) => shortName(g, m)).join(", ")} into one module`;
    const parts = [...byScheme].map(([s, names]) => `${s}: ${listSome(names)}`);
    out.push(`${g.module}: vLLM ${what} with one quantization scheme, but ${parts.join("; ")}`);
  }
  return out;
}

/**
 * The fused modules of the Hugging Face MoE families that name their Linears as Llama does: q/k/v
 * into `qkv_proj`; a dense MLP's and a shared expert's gate/up into `gate_up_proj`; all routed
 * experts of a layer (`mlp.experts.N.{gate,up,down}_proj`) into one fused MoE module. A shared
 * expert is `shared_experts` (DeepSeek, GLM) or `shared_expert` (Qwen3-Next).
 */
export function hfFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const groups = new Map<string, string[]>();
  for (const n of linearNames) {
    const attn = n.match(/^(.*\.self_attn)\.[qkv]_proj$/);
    const experts = attn ? null : n.match(/^(.*\.mlp\.experts)\.\d+\.(gate|up|down)_proj$/);
    const gateUp = attn || experts ? null : n.match(/^(.*\.mlp(\.shared_experts?)?)\.(gate|up)_proj$/);
    if (attn) append(groups, `${attn[1]}.qkv_proj`, n);
    else if (experts) append(groups, experts[1] as string, n);
    else if (gateUp) append(groups, `${gateUp[1]}.gate_up_proj`, n);
  }
  return [...groups]
    .filter(([, members]) => members.length > 1)
    .map(([module, members]) => ({
      module,
      members: members.sort(byShardOrder),
      ...(module.endsWith(".experts") ? { weights: expertWeights(members, (m) => m.endsWith(".down_proj")) } : {}),
    }));
}

/**
 * Which config group (scheme) a module gets when several targets match it, by compressed-tensors'
 * own rule, so that what moecal writes, inspects and evaluates is what compressed-tensors and vLLM
 * read back. Source: vllm-project/compressed-tensors at ac8e2ba, `utils/match.py` (`match_name`,
 * `_match_class`, `match_targets`) and `quantization/lifecycle/apply.py` (`_scheme_from_targets`):
 * targets are sorted by (is a regex, text); exact names and regexes that match the name come first
 * in that order, then class names; the first wins. A regex matches from the start of the name
 * (Python's `re.match`). A target given in two groups belongs to the later one.
 */

/** Whether `target` (an exact name, or `re:PATTERN` matched from the start) matches module `name`. */
export function matchName(name: string, target: string): boolean {
  if (!target.startsWith("re:")) return target === name;
  return new RegExp(`^(?:${target.slice(3)})`).test(name);
}

/** The targets matching a module, most specific first: `match_targets`' order. `classes`: the module's class names. */
export function matchTargets(name: string, classes: readonly string[], targets: Iterable<string>): string[] {
  const sorted = [...targets].sort((a, b) => {
    const ra = a.includes("re:") ? 1 : 0;
    const rb = b.includes("re:") ? 1 : 0;
    if (ra !== rb) return ra - rb;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  const out = sorted.filter((t) => matchName(name, t));
  for (const t of sorted) if (classes.includes(t) && !out.includes(t)) out.push(t);
  return out;
}

/**
 * The group that applies to module `name` (of classes `classes`, "Linear" by default), or null
 * when the ignore list matches it (by name or class) or no target does.
 */
export function schemeFor<G extends { targets: readonly string[] }>(
  groups: readonly G[],
  ignore: readonly string[],
  name: string,
  classes: readonly string[] = ["Linear"],
): G | null {
  if (matchTargets(name, classes, ignore).length > 0) return null;
  const byTarget = new Map<string, G>();
  for (const g of groups) for (const t of g.targets) byTarget.set(t, g);
  const first = matchTargets(name, classes, byTarget.keys())[0];
  return first === undefined ? null : (byTarget.get(first) ?? null);
}

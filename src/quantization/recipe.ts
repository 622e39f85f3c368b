/**
 * A recipe: which scheme each Linear gets, as the checkpoints people serve mix them (NVFP4 routed
 * experts, FP8_BLOCK attention, ...). An ordered list of (targets, scheme), one entry per distinct
 * scheme, resolved per Linear by compressed-tensors' own rule (match.ts: exact names, then regexes,
 * then class names), so that what moecal quantizes is what compressed-tensors and vLLM read back
 * from the config groups it writes. A Linear no entry matches stays unquantized.
 */
import { UsageError } from "../errors.js";
import { schemeFor } from "./match.js";
import { type Scheme, type SchemeOverrides, resolveScheme } from "./scheme.js";

export interface RecipeEntry {
  /** exact module names, `re:` patterns, or "Linear" (every Linear) */
  targets: string[];
  scheme: Scheme;
}

export interface Recipe {
  entries: RecipeEntry[];
  /** the `--scheme` values as given */
  given: string[];
}

/**
 * A recipe from `--scheme` values: `SCHEME` (every Linear: today's meaning) or `PATTERN=SCHEME`
 * (the Linears PATTERN matches: an exact name or `re:REGEX`), repeatable. Entries of one scheme are
 * one config group.
 */
export function parseRecipe(values: readonly string[], overrides: SchemeOverrides = {}): Recipe {
  if (values.length === 0) values = ["W4A16"];
  const byScheme = new Map<string, RecipeEntry>();
  for (const v of values) {
    const eq = v.lastIndexOf("=");
    const target = eq < 0 ? "Linear" : v.slice(0, eq);
    const name = eq < 0 ? v : v.slice(eq + 1);
    if (target === "")
      throw new UsageError(`--scheme "${v}": the pattern before "=" is empty (PATTERN=SCHEME, e.g. 're:.*mlp\\.experts\\..*=NVFP4A16')`);
    if (target.startsWith("re:"))
      try {
        new RegExp(target.slice(3));
      } catch (cause) {
        throw new UsageError(`--scheme "${v}": ${target} is not a valid regular expression (${(cause as Error).message})`, { cause });
      }
    const scheme = resolveScheme(name, overrides);
    const entry = byScheme.get(scheme.name);
    if (entry) entry.targets.push(target);
    else byScheme.set(scheme.name, { targets: [target], scheme });
  }
  const entries = [...byScheme.values()];
  const seen = new Map<string, string>();
  for (const e of entries)
    for (const t of e.targets) {
      const other = seen.get(t);
      if (other)
        throw new UsageError(`--scheme: the target ${t} is given twice, for ${other} and ${e.scheme.name}; give each target one scheme`);
      seen.set(t, e.scheme.name);
    }
  return { entries, given: [...values] };
}

/** The `scheme` option as a list of `--scheme` values (none: W4A16 for every Linear). */
export function schemeValues(scheme: string | readonly string[] | undefined): string[] {
  return scheme === undefined ? [] : typeof scheme === "string" ? [scheme] : [...scheme];
}

/** The scheme of Linear `name` (null: no entry matches, or `ignore` does; it stays unquantized). */
export function schemeOfLinear(recipe: Recipe, ignore: readonly string[], name: string): Scheme | null {
  return schemeFor(recipe.entries, ignore, name)?.scheme ?? null;
}

/** Whether the recipe gives every Linear one scheme (a single entry targeting the class). */
export function isUniform(recipe: Recipe): boolean {
  return recipe.entries.length === 1 && recipe.entries[0]?.targets.length === 1 && recipe.entries[0].targets[0] === "Linear";
}

/** The recipe as moecal.json's `scheme` names it: the scheme, or each entry as PATTERNS=SCHEME. */
export function recipeName(recipe: Recipe): string {
  if (isUniform(recipe)) return (recipe.entries[0] as RecipeEntry).scheme.name;
  return recipe.entries.map((e) => `${e.targets.join(",")}=${e.scheme.name}`).join(" ");
}

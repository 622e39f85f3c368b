/**
 * A recipe: which scheme, and which method, each Linear gets, as the checkpoints people serve mix
 * them (NVFP4 routed experts by GPTQ, FP8_BLOCK attention by round-to-nearest, ...). An ordered list
 * of (targets, scheme, method), resolved per Linear by compressed-tensors' own rule (match.ts: exact
 * names, then regexes, then class names), so that what moecal quantizes is what compressed-tensors
 * and vLLM read back from the config groups it writes. A Linear no entry matches stays unquantized.
 * Given on the command line (`--scheme PATTERN=SCHEME`, `--method PATTERN=METHOD`) or as an
 * llm-compressor recipe file (recipe-file.ts).
 */
import { UsageError } from "../errors.js";
import { schemeFor } from "./match.js";
import { type Scheme, type SchemeOverrides, hasFixedGroups, resolveScheme, validatePatterns } from "./scheme.js";

/** GPTQ, or round-to-nearest (llm-compressor's GPTQModifier and QuantizationModifier). */
export type Method = "gptq" | "rtn";
export const METHODS: readonly Method[] = ["gptq", "rtn"];

export interface RecipeEntry {
  /** exact module names, `re:` patterns, or "Linear" (every Linear) */
  targets: string[];
  scheme: Scheme;
  method: Method;
}

export interface Recipe {
  /** one per distinct (scheme, method), in the order first given */
  entries: RecipeEntry[];
  /** the `--scheme` and `--method` options as given (none: W4A16 by GPTQ), or `--recipe` and the file's name */
  given: string[];
  /** more Linears to leave unquantized (a recipe file's `ignore` lists) */
  ignore: string[];
  /** GPTQ's settings a recipe file gives (one for the run) */
  gptq: { dampening?: number; blockSize?: number };
  /** the recipe file's text, as read */
  text?: string;
}

/** One target's scheme and method, before entries are formed. */
export interface RecipeRule {
  target: string;
  scheme: Scheme;
  method: Method;
}

function methodOf(value: string, where: string): Method {
  const m = value.toLowerCase();
  if (!(METHODS as readonly string[]).includes(m)) throw new UsageError(`${where}: unknown method "${value}" (${METHODS.join(" or ")})`);
  return m as Method;
}

/** `PATTERN=VALUE` split at the last "=" (a regex may hold "="); a bare VALUE targets every Linear. */
function splitEntry(v: string, option: string, example: string): [string, string] {
  const eq = v.lastIndexOf("=");
  const target = eq < 0 ? "Linear" : v.slice(0, eq);
  if (target === "") throw new UsageError(`${option} "${v}": the pattern before "=" is empty (PATTERN=VALUE, e.g. '${example}')`);
  validatePatterns([target], `${option} "${v}": pattern`);
  return [target, eq < 0 ? v : v.slice(eq + 1)];
}

/** Rules into entries: one per distinct (scheme, method), a target given once. */
export function entriesOf(rules: readonly RecipeRule[], where: string): RecipeEntry[] {
  const byKey = new Map<string, RecipeEntry>();
  const seen = new Map<string, string>();
  for (const r of rules) {
    const label = `${r.scheme.name} (${r.method})`;
    const other = seen.get(r.target);
    if (other)
      throw new UsageError(`${where}: the target ${r.target} is given twice, for ${other} and ${label}; give each target one scheme`);
    seen.set(r.target, label);
    const key = `${r.scheme.name}/${r.method}`;
    const entry = byKey.get(key);
    if (entry) entry.targets.push(r.target);
    else byKey.set(key, { targets: [r.target], scheme: r.scheme, method: r.method });
  }
  return [...byKey.values()];
}

/**
 * A recipe from `--scheme` values, `SCHEME` (every Linear: today's meaning) or `PATTERN=SCHEME`
 * (the Linears PATTERN matches: an exact name or `re:REGEX`), and `--method` values, `METHOD` (the
 * default, gptq) or `PATTERN=METHOD` (the method of the `--scheme` entry given with that PATTERN).
 */
export function parseRecipe(values: readonly string[], overrides: SchemeOverrides = {}, methods: readonly string[] = []): Recipe {
  const given = [...values.map((v) => `--scheme ${v}`), ...methods.map((m) => `--method ${m}`)];
  if (values.length === 0) values = ["W4A16"];
  const perTarget = new Map<string, Method>();
  let fallback: Method = "gptq";
  for (const v of methods) {
    const [target, name] = splitEntry(v, "--method", "re:.*self_attn\\..*=rtn");
    const method = methodOf(name, `--method "${v}"`);
    if (target === "Linear" && !v.includes("=")) fallback = method;
    else perTarget.set(target, method);
  }
  const rules = values.map((v): RecipeRule => {
    const [target, name] = splitEntry(v, "--scheme", "re:.*mlp\\.experts\\..*=NVFP4A16");
    // in a recipe of several schemes, --group-size sizes those whose groups may be resized
    const w = resolveScheme(name).weights;
    const sized = values.length === 1 || (w.strategy === "group" && !hasFixedGroups(w));
    return { target, scheme: resolveScheme(name, sized ? overrides : { ...overrides, groupSize: undefined }), method: fallback };
  });
  if (overrides.groupSize !== undefined && !rules.some((r) => r.scheme.weights.groupSize === overrides.groupSize))
    resolveScheme((rules[0] as RecipeRule).scheme.name, overrides);
  for (const [target, method] of perTarget) {
    const rule = rules.find((r) => r.target === target);
    if (!rule)
      throw new UsageError(
        `--method ${target}=${method}: no --scheme entry has the pattern ${target} (PATTERN=METHOD sets the method of the --scheme PATTERN=SCHEME entry)`,
      );
    rule.method = method;
  }
  return { entries: entriesOf(rules, "--scheme"), given, ignore: [], gptq: {} };
}

/** The `scheme` option as a list of `--scheme` values (none: W4A16 for every Linear). */
export function schemeValues(scheme: string | readonly string[] | undefined): string[] {
  return scheme === undefined ? [] : typeof scheme === "string" ? [scheme] : [...scheme];
}

/** The entry of Linear `name` (null: no entry matches, or `ignore` does; it stays unquantized). */
export function entryOfLinear(recipe: Recipe, ignore: readonly string[], name: string): RecipeEntry | null {
  return schemeFor(recipe.entries, ignore, name);
}

/** The scheme of Linear `name` (null: unquantized). */
export function schemeOfLinear(recipe: Recipe, ignore: readonly string[], name: string): Scheme | null {
  return entryOfLinear(recipe, ignore, name)?.scheme ?? null;
}

/** Whether the recipe gives every Linear one scheme (a single entry targeting the class). */
export function isUniform(recipe: Recipe): boolean {
  return recipe.entries.length === 1 && recipe.entries[0]?.targets.length === 1 && recipe.entries[0].targets[0] === "Linear";
}

/** The recipe as moecal.json's `scheme` names it: the scheme, or each entry as PATTERNS=SCHEME (with :METHOD when entries differ in it). */
export function recipeName(recipe: Recipe): string {
  if (isUniform(recipe)) return (recipe.entries[0] as RecipeEntry).scheme.name;
  const mixed = recipeMethod(recipe) === "mixed";
  return recipe.entries.map((e) => `${e.targets.join(",")}=${e.scheme.name}${mixed ? `:${e.method}` : ""}`).join(" ");
}

/** The method of the run as a whole: the entries' one method, or "mixed". */
export function recipeMethod(recipe: Recipe): Method | "mixed" {
  const methods = new Set(recipe.entries.map((e) => e.method));
  return methods.size === 1 ? ([...methods][0] as Method) : "mixed";
}

/**
 * llm-compressor's recipe file (YAML, or JSON) read into a moecal recipe, for the modifiers moecal
 * runs: `QuantizationModifier` (round-to-nearest) and `GPTQModifier`, with `targets`, `ignore`,
 * `scheme` (a preset, or `{PRESET: targets}`) or `config_groups`, and GPTQ's `block_size`,
 * `dampening_frac` and `actorder`. The layout is llm-compressor's `Recipe.from_dict`
 * (vllm-project/llm-compressor ab1ba3e, recipe/recipe.py): top-level `<name>_stage` mappings of
 * `<name>_modifiers` mappings of modifier name to arguments; a modifier's config groups as
 * `QuantizationMixin.resolve_quantization_config` (modifiers/quantization/quantization/mixin.py)
 * and `GPTQModifier.resolve_quantization_config` (modifiers/gptq/base.py) resolve them. Anything
 * else (another modifier, a field moecal does not implement) is refused, naming it.
 */
import fs from "node:fs";
import path from "node:path";
import { parse } from "yaml";
import { UsageError } from "../errors.js";
import { schemeOfGroup } from "./args-scheme.js";
import { type Method, type Recipe, type RecipeRule, entriesOf } from "./recipe.js";
import { type ActOrder, type Scheme, resolveScheme, validatePatterns } from "./scheme.js";

type Dict = Record<string, unknown>;

const isDict = (v: unknown): v is Dict => typeof v === "object" && v !== null && !Array.isArray(v);

const MODIFIERS: Record<string, Method> = { QuantizationModifier: "rtn", GPTQModifier: "gptq" };
/** arguments that change nothing moecal writes at these values */
const NEUTRAL: Record<string, (v: unknown) => boolean> = {
  kv_cache_scheme: (v) => v === null,
  weight_observer: (v) => v === null || v === "minmax",
  input_observer: (v) => v === null || v === "minmax",
  output_observer: (v) => v === null,
  observer: (v) => v === null,
  bypass_divisibility_checks: (v) => v === false,
  offload_hessians: (v) => typeof v === "boolean",
  group: () => true,
  start: (v) => v === null || v === -1 || v === 0,
  end: (v) => v === null || v === -1,
};
const ARGS = new Set(["targets", "ignore", "scheme", "config_groups"]);
const GPTQ_ARGS = new Set(["block_size", "dampening_frac", "actorder"]);

function strings(v: unknown, where: string): string[] {
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || !list.every((t) => typeof t === "string"))
    throw new UsageError(`${where}: expected a name or a list of names, got ${JSON.stringify(v)}`);
  validatePatterns(list, `${where}: pattern`);
  return list;
}

/** GPTQModifier's actorder resolved against a config group's (llm-compressor's `resolve_actorder`). */
function actorderOf(modifier: unknown, existing: unknown, where: string): ActOrder {
  const norm = (v: unknown): "static" | null | "other" => (v === "static" ? "static" : v === null || v === false ? null : "other");
  const e = existing === undefined ? undefined : norm(existing);
  const m = modifier === undefined ? undefined : norm(modifier);
  if (e === "other" || m === "other")
    throw new UsageError(`${where}: actorder ${JSON.stringify(e === "other" ? existing : modifier)} is not supported (static, or null)`);
  if (m === undefined) return e ?? "static";
  if (e !== undefined && e !== m)
    throw new UsageError(`${where}: actorder ${JSON.stringify(modifier)} differs from the config group's ${JSON.stringify(existing)}`);
  return m;
}

/** One modifier's rules (targets with their scheme and method) and ignore list. */
function modifierRules(name: string, args: Dict, where: string): { rules: RecipeRule[]; ignore: string[] } {
  const method = MODIFIERS[name] as Method;
  for (const [k, v] of Object.entries(args)) {
    if (ARGS.has(k) || (method === "gptq" && GPTQ_ARGS.has(k))) continue;
    const neutral = NEUTRAL[k];
    if (!neutral)
      throw new UsageError(
        `${where}.${k}: ${name} argument not supported by moecal (it reads ${[...ARGS, ...(method === "gptq" ? GPTQ_ARGS : [])].join(", ")})`,
      );
    if (!neutral(v)) throw new UsageError(`${where}.${k}: ${JSON.stringify(v)} is not supported (only the default)`);
  }
  const ignore = args.ignore === undefined ? [] : strings(args.ignore, `${where}.ignore`);
  const targets = args.targets === undefined ? ["Linear"] : strings(args.targets, `${where}.targets`);
  if (args.scheme !== undefined && args.config_groups !== undefined)
    throw new UsageError(`${where}: give either scheme or config_groups (as llm-compressor requires)`);
  const actorder = (existing: unknown, at: string): ActOrder => (method === "gptq" ? actorderOf(args.actorder, existing, at) : null);
  const rules: RecipeRule[] = [];
  if (typeof args.scheme === "string" || isDict(args.scheme)) {
    const schemes: Dict = typeof args.scheme === "string" ? { [args.scheme]: targets } : args.scheme;
    for (const [preset, t] of Object.entries(schemes)) {
      const scheme = schemeByName(preset, `${where}.scheme`, actorder(undefined, `${where}.actorder`));
      for (const target of strings(t, `${where}.scheme.${preset}`)) rules.push({ target, scheme, method });
    }
  } else if (isDict(args.config_groups)) {
    for (const [g, group] of Object.entries(args.config_groups)) {
      const at = `${where}.config_groups.${g}`;
      if (!isDict(group)) throw new UsageError(`${at}: expected a mapping (targets, weights, input_activations)`);
      for (const k of Object.keys(group))
        if (!["targets", "weights", "input_activations", "output_activations", "format"].includes(k))
          throw new UsageError(`${at}.${k}: not a QuantizationScheme field moecal knows`);
      const existing = isDict(group.weights) ? group.weights.actorder : undefined;
      const scheme = schemeOfGroup(group, at, actorder(existing, `${at}.weights.actorder`));
      for (const target of strings(group.targets, `${at}.targets`)) rules.push({ target, scheme, method });
    }
  } else if (args.scheme !== undefined || args.config_groups !== undefined)
    throw new UsageError(`${where}: scheme must be a preset name or {PRESET: targets}, config_groups a mapping of groups`);
  else throw new UsageError(`${where}: gives neither scheme nor config_groups, so it quantizes nothing`);
  return { rules, ignore };
}

function schemeByName(preset: string, where: string, actorder: ActOrder): Scheme {
  try {
    return resolveScheme(preset, { actorder });
  } catch (cause) {
    throw new UsageError(`${where}: ${(cause as Error).message}`, { cause });
  }
}

/** GPTQ's settings: one for the run, so every GPTQModifier must agree. */
function gptqSettings(mods: [string, Dict][]): Recipe["gptq"] {
  const out: Recipe["gptq"] = {};
  for (const [where, args] of mods) {
    const d = args.dampening_frac;
    if (d !== undefined && (typeof d !== "number" || !(d > 0 && d <= 1)))
      throw new UsageError(`${where}.dampening_frac: ${JSON.stringify(d)} is not supported (a fraction in (0, 1])`);
    const b = args.block_size;
    if (b !== undefined && (typeof b !== "number" || !Number.isInteger(b) || b < 1))
      throw new UsageError(`${where}.block_size: ${JSON.stringify(b)} is not a positive integer`);
    for (const [key, v] of [
      ["dampening", d],
      ["blockSize", b],
    ] as const) {
      if (v === undefined) continue;
      if (out[key] !== undefined && out[key] !== v)
        throw new UsageError(
          `${where}: GPTQModifiers give different ${key === "dampening" ? "dampening_frac" : "block_size"} (${out[key]}, ${v}); moecal runs GPTQ with one`,
        );
      out[key] = v as number;
    }
  }
  return out;
}

/** The recipe in `file`: its modifiers in order, their ignore lists together. */
export function readRecipeFile(file: string): Recipe {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (cause) {
    throw new UsageError(`--recipe ${file}: cannot read it (${(cause as Error).message})`, { cause });
  }
  return recipeFromText(file, text);
}

/** The recipe the text of `file` holds (a distributed worker gets the text from the run's manifest). */
export function recipeFromText(file: string, text: string): Recipe {
  let doc: unknown;
  try {
    // PyYAML's safe_load reads YAML 1.1, as llm-compressor does; JSON is YAML
    doc = file.toLowerCase().endsWith(".json") ? JSON.parse(text) : parse(text, { version: "1.1" });
  } catch (cause) {
    throw new UsageError(
      `--recipe ${file}: not valid ${file.endsWith(".json") ? "JSON" : "YAML"} (${(cause as Error).message.split("\n")[0]})`,
      { cause },
    );
  }
  if (!isDict(doc))
    throw new UsageError(`--recipe ${file}: expected a mapping of stages (e.g. quant_stage: {quant_modifiers: {GPTQModifier: ...}})`);
  const rules: RecipeRule[] = [];
  const ignore: string[] = [];
  const gptq: [string, Dict][] = [];
  for (const [stage, mods] of Object.entries(doc)) {
    if (!stage.endsWith("_stage") || !isDict(mods))
      throw new UsageError(
        `--recipe ${file}: ${stage}: expected a <name>_stage mapping of <name>_modifiers (moecal reads no other top-level field)`,
      );
    for (const [group, modifiers] of Object.entries(mods)) {
      if (!group.endsWith("_modifiers") || !isDict(modifiers))
        throw new UsageError(`--recipe ${file}: ${stage}.${group}: expected a <name>_modifiers mapping of modifiers`);
      for (const [name, args] of Object.entries(modifiers)) {
        const where = `--recipe ${file}: ${stage}.${group}.${name}`;
        if (!(name in MODIFIERS))
          throw new UsageError(`${where}: moecal does not run ${name} (it runs ${Object.keys(MODIFIERS).join(" and ")})`);
        const a = args ?? {};
        if (!isDict(a)) throw new UsageError(`${where}: expected a mapping of arguments`);
        const m = modifierRules(name, a, where);
        rules.push(...m.rules);
        for (const i of m.ignore) if (!ignore.includes(i)) ignore.push(i);
        if (MODIFIERS[name] === "gptq") gptq.push([where, a]);
      }
    }
  }
  if (rules.length === 0) throw new UsageError(`--recipe ${file}: no QuantizationModifier or GPTQModifier found`);
  return {
    entries: entriesOf(rules, `--recipe ${file}`),
    given: [`--recipe ${path.basename(file)}`],
    ignore,
    gptq: gptqSettings(gptq),
    text,
  };
}

/**
 * What oneshot checks before any calibration work: the group size against every target Linear,
 * and the input's tensors the model does not use.
 */
import { type Method, type Recipe, type RecipeEntry, entryOfLinear } from "../quantization/recipe.js";
import type { ModelConfig } from "../models/family.js";
import { inStoredOnlyLayer } from "../models/stored-layers.js";
import { WeightMappingError, UsageError } from "../errors.js";
import { Linear } from "../nn/layers.js";
import type { AnyModule } from "../nn/module.js";
import { type Scheme, hasFixedGroups, matchesAny } from "../quantization/scheme.js";
import type { Seed } from "../util/numpy-random.js";
import type { Checkpoint } from "../io/checkpoint.js";
import type { ScaleDType } from "../quantization/params.js";
import type { CausalLM } from "../models/family.js";
import { requiredSuffixes } from "../io/compressed-tensors.js";
import { NumericalError } from "../errors.js";
import type { FusedGroup } from "../models/fused.js";

/**
 * Check the group size against every target Linear's input size before any work. Without an
 * explicit --group-size, the preset's size is halved until it divides them all (with a note);
 * a format's own group size (NVFP4's 16, MXFP4's 32) is never changed: such a run is refused.
 */
export function fitGroupSize(
  scheme: Scheme,
  model: AnyModule,
  isTarget: (n: string) => boolean,
  explicit: boolean,
  warn: (m: string) => void,
): Scheme {
  const g0 = scheme.weights.groupSize;
  const grouped = scheme.weights.strategy === "group" || scheme.weights.strategy === "tensor_group";
  if (!grouped || g0 === null) return scheme;
  const inputs = model
    .namedModules()
    .filter(([n, m]) => m instanceof Linear && isTarget(n))
    .map(([n, m]) => [n, (m as Linear).inFeatures] as const);
  const bad = (g: number): readonly [string, number] | undefined => inputs.find(([, k]) => k % g !== 0);
  const first = bad(g0);
  if (!first) return scheme;
  if (explicit) throw new UsageError(`--group-size ${g0} does not divide the input size ${first[1]} of ${first[0]}`);
  if (hasFixedGroups(scheme.weights))
    throw new UsageError(
      `scheme ${scheme.name} has groups of ${g0} by definition, which do not divide the input size ${first[1]} of ${first[0]}; choose another scheme, or leave such Linears unquantized (--ignore)`,
    );
  let g = g0;
  while (g > 1 && bad(g)) g = g / 2;
  if (!Number.isInteger(g) || bad(g)) throw new UsageError(`no power-of-two group size divides the input size ${first[1]} of ${first[0]}`);
  warn(`group size ${g0} does not divide the input size ${first[1]} of ${first[0]}; using group size ${g}`);
  return { ...scheme, weights: { ...scheme.weights, groupSize: g } };
}

/**
 * Each Linear's recipe entry by compressed-tensors' rule (a Linear the ignore list or no entry
 * matches stays unquantized), and each entry's scheme with its group size fitted to its own Linears.
 */
export function resolveRecipe(
  recipe: Recipe,
  ignore: readonly string[],
  model: AnyModule,
  explicitGroupSize: boolean,
  warn: (m: string) => void,
  stored: (linear: string) => string = (n) => n,
): {
  entryOf: Map<string, number>;
  schemes: Scheme[];
  schemeOf: (linear: string) => Scheme | null;
  methodOf: (linear: string) => Method;
} {
  const entryOf = new Map<string, number>();
  for (const [n, m] of model.namedModules()) {
    if (!(m instanceof Linear)) continue;
    // targets as written into the config, which compressed-tensors and vLLM match against the
    // checkpoint's names (Qwen3.5's model.language_model.*); the ignore list by either name
    if (matchesAny(n, ignore)) continue;
    const e = entryOfLinear(recipe, ignore, stored(n));
    if (e) entryOf.set(n, recipe.entries.indexOf(e));
  }
  const schemes = recipe.entries.map((e, k) => fitGroupSize(e.scheme, model, (n) => entryOf.get(n) === k, explicitGroupSize, warn));
  const schemeOf = (n: string): Scheme | null => {
    const k = entryOf.get(n);
    return k === undefined ? null : (schemes[k] as Scheme);
  };
  const methodOf = (n: string): Method => {
    const k = entryOf.get(n);
    return k === undefined ? "rtn" : (recipe.entries[k] as RecipeEntry).method;
  };
  return { entryOf, schemes, schemeOf, methodOf };
}

/** A seed as JSON: a number while it is exact as one, else its decimal digits. */
export function seedForJson(seed: Seed): number | string {
  return typeof seed === "number" || seed <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seed) : seed.toString();
}

/** The output-side names moecal creates for a quantized Linear `P`: `P.weight_packed`, `P.weight_scale`, ... */
const QUANT_SUFFIXES = [
  "weight_packed",
  "weight_scale",
  "weight_shape",
  "weight_zero_point",
  "input_scale",
  "weight_global_scale",
  "input_global_scale",
];

/**
 * Tensors of the input that the model does not use are copied to the output unchanged, with a
 * warning each (the multi-token-prediction layers with one note); those that would make the
 * output invalid are refused: a layer or expert index beyond the config's, or a name moecal
 * itself writes for a quantized Linear.
 */
export function checkUnexpectedTensors(
  names: string[],
  config: ModelConfig,
  targets: ReadonlySet<string>,
  dir: string,
  warn: (m: string) => void,
): void {
  for (const n of names) {
    const layer = /^model\.layers\.(\d+)\./.exec(n)?.[1];
    if (layer !== undefined && Number(layer) >= (config.storedLayers ?? config.numHiddenLayers))
      throw new WeightMappingError(
        `${dir}: tensor "${n}" belongs to layer ${layer}, but the config has ${config.numHiddenLayers} layers (0-${config.numHiddenLayers - 1}); vLLM could not load an output carrying it`,
      );
    const expert = /\.experts\.(\d+)\./.exec(n)?.[1];
    if (expert !== undefined && Number(expert) >= config.numExperts)
      throw new WeightMappingError(
        `${dir}: tensor "${n}" belongs to expert ${expert}, but the config has ${config.numExperts} experts (0-${config.numExperts - 1}); vLLM could not load an output carrying it`,
      );
    const dot = n.lastIndexOf(".");
    if (QUANT_SUFFIXES.includes(n.slice(dot + 1)) && targets.has(n.slice(0, dot)))
      throw new WeightMappingError(
        `${dir}: tensor "${n}" has the name moecal writes for the quantized ${n.slice(0, dot)}; the output would hold it twice`,
      );
  }
  const kept = names.filter((n) => inStoredOnlyLayer(n, config));
  if (kept.length) {
    const part = (n: string): string =>
      config.storedOnlyPrefixes?.find((p) => n.startsWith(p)) ?? /^model\.layers\.\d+\./.exec(n)?.[0] ?? n;
    const where = [...new Set(kept.map(part))].slice(0, 4);
    warn(
      `${dir}: ${kept.length} tensors stored beside the model (${where.join(", ")}: multi-token prediction or another tower) are not run; copied unquantized, their Linear layers named in ignore`,
    );
  }
  const unused = names.filter((n) => !inStoredOnlyLayer(n, config));
  const shown = unused.slice(0, 50);
  for (const n of shown) warn(`${dir}: tensor "${n}" is not used by the model; copied to the output unchanged`);
  if (unused.length > shown.length) warn(`${dir}: ${unused.length - shown.length} more unused tensors copied unchanged`);
}

export function scaleDTypeOf(ck: Checkpoint, name: string): ScaleDType {
  const d = ck.info(name).dtype;
  return d === "BF16" || d === "F16" ? d : "F32";
}

/** Weights of the target Linears of the largest decoder layer (what decides GPTQ's worker pool). */
export function largestLayerWork(model: CausalLM, isTarget: (n: string) => boolean): number {
  const perLayer = new Map<string, number>();
  for (const [n, m] of model.namedModules()) {
    const layer = /^model\.layers\.(\d+)\./.exec(n)?.[1];
    if (layer === undefined || !(m instanceof Linear) || !isTarget(n)) continue;
    perLayer.set(layer, (perLayer.get(layer) ?? 0) + m.inFeatures * m.outFeatures);
  }
  return Math.max(0, ...perLayer.values());
}

/** Every quantized Linear must carry the tensors its format needs. */
export function assertComplete(name: string, present: string[], scheme: Scheme): void {
  const missing = requiredSuffixes(scheme.format, scheme.weights, scheme.inputActivations).filter((s) => !present.includes(`${name}.${s}`));
  if (missing.length) throw new NumericalError(`${name}: quantized tensors incomplete (missing ${missing.join(", ")})`);
}

/** Refuse an ignore list that splits a module vLLM fuses (`conflicts` from fusedSchemeConflicts). */
export function assertNoFusedSplit(conflicts: readonly string[]): void {
  if (conflicts.length === 0) return;
  const rest =
    conflicts
      .slice(1, 4)
      .map((c) => `\n  ${c}`)
      .join("") + (conflicts.length > 4 ? `\n  (${conflicts.length - 4} more)` : "");
  throw new UsageError(
    `the ignore list or the --scheme recipe splits ${conflicts.length} module(s) that vLLM fuses, so vLLM could not load the result (give all members of each one scheme, or ignore all or none, or pass --no-vllm-check): ${conflicts[0]}${rest}`,
  );
}

/**
 * vLLM finds a fused MoE module's scheme under `<module>.0.gate_proj`, `.0.up_proj` and
 * `.0.down_proj`, whatever the checkpoint calls its experts (vllm 8a95a68,
 * compressed_tensors_moe.py `get_moe_method`). Refuse a recipe or ignore list under which those
 * names resolve, by the written config, otherwise than the quantized experts themselves (exact
 * names, or patterns on Mixtral's w1/w3/w2): vLLM would load them with another scheme, or none.
 */
export function assertMoeLookup(
  fused: readonly FusedGroup[],
  entryName: (linear: string) => string,
  lookedUp: (name: string) => string,
  stored: (name: string) => string,
): void {
  const problems: string[] = [];
  for (const g of fused) {
    if (!g.module.endsWith(".experts") || g.members.length === 0) continue;
    const actual = entryName(g.members[0] as string);
    // experts left unquantized: vLLM's side of that is not checked here (see docs/quantization.md)
    if (actual === "unquantized") continue;
    const looked = ["gate_proj", "up_proj", "down_proj"].map((p) => [p, lookedUp(`${g.module}.0.${p}`)] as const);
    const off = looked.filter(([, e]) => e !== actual);
    if (off.length)
      problems.push(
        `${stored(g.module)}: vLLM looks its scheme up under experts.0.gate_proj/up_proj/down_proj, which the targets give ${off.map(([p, e]) => `${p}: ${e}`).join(", ")}, but its experts are ${actual}`,
      );
  }
  if (problems.length)
    throw new UsageError(
      `${problems[0]}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""}; give the experts a pattern that matches those names too (e.g. re:.*experts\\..*), or pass --no-vllm-check`,
    );
}

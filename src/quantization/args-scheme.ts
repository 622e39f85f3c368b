/**
 * A compressed-tensors QuantizationScheme as a recipe file writes it (a config group's `weights`,
 * `input_activations`, `format`) recognized as the preset moecal implements. Defaults and the
 * strategy inferred from `group_size` follow compressed-tensors' `QuantizationArgs`
 * (vllm-project/compressed-tensors ac8e2ba, quantization/quant_args.py: num_bits 8, type int,
 * symmetric, dynamic false; no strategy: tensor without group_size, group with a positive one,
 * channel with -1). A scheme that is no preset is refused, naming the field and what it describes.
 */
import { UsageError } from "../errors.js";
import { type ActOrder, type QuantArgs, SCHEME_NAMES, type Scheme, resolveScheme } from "./scheme.js";

type Dict = Record<string, unknown>;

const ARGS_KEYS = new Set([
  "num_bits",
  "type",
  "symmetric",
  "group_size",
  "strategy",
  "block_structure",
  "dynamic",
  "actorder",
  "observer",
  "observer_kwargs",
  "scale_dtype",
  "zp_dtype",
]);
/** observers whose result moecal computes (min-max of the weight; of the activations for static scales) */
const MINMAX_OBSERVERS = new Set(["minmax", "memoryless_minmax", "static_minmax", "memoryless"]);

function isDict(v: unknown): v is Dict {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The arguments as compressed-tensors completes them (actorder left to the caller). */
function quantArgs(raw: unknown, where: string): QuantArgs {
  if (!isDict(raw)) throw new UsageError(`${where}: expected a mapping of quantization arguments, got ${JSON.stringify(raw)}`);
  for (const k of Object.keys(raw))
    if (!ARGS_KEYS.has(k)) throw new UsageError(`${where}.${k}: not a QuantizationArgs field moecal knows (${[...ARGS_KEYS].join(", ")})`);
  const observer = raw.observer;
  if (observer !== undefined && observer !== null && !MINMAX_OBSERVERS.has(String(observer)))
    throw new UsageError(
      `${where}.observer: ${JSON.stringify(observer)} is not supported (moecal's scales are min-max: minmax, memoryless_minmax, static_minmax)`,
    );
  if (isDict(raw.observer_kwargs) && Object.keys(raw.observer_kwargs).length > 0)
    throw new UsageError(`${where}.observer_kwargs: observer arguments are not supported`);
  const numBits = raw.num_bits ?? 8;
  const type = raw.type ?? "int";
  const groupSize = raw.group_size ?? null;
  if (typeof numBits !== "number" || (type !== "int" && type !== "float") || (groupSize !== null && typeof groupSize !== "number"))
    throw new UsageError(`${where}: num_bits, type and group_size must be a number, "int" or "float", and a number`);
  const strategy = raw.strategy ?? (groupSize === null ? "tensor" : groupSize === -1 ? "channel" : "group");
  // the dtypes compressed-tensors infers, spelled as torch prints them, with or without "torch."
  const fp8 = /^(torch\.)?float8_e4m3fn$/;
  const nvfp4 = type === "float" && numBits === 4 && strategy === "tensor_group";
  if (raw.scale_dtype != null && !(nvfp4 && fp8.test(String(raw.scale_dtype))))
    throw new UsageError(
      `${where}.scale_dtype: ${JSON.stringify(raw.scale_dtype)} is not supported (scales are in the checkpoint's dtype; NVFP4's in float8_e4m3fn)`,
    );
  const zp = type === "float" ? fp8 : numBits <= 8 ? /^(torch\.)?int8$/ : /^$/;
  if (raw.zp_dtype != null && !zp.test(String(raw.zp_dtype)))
    throw new UsageError(
      `${where}.zp_dtype: ${JSON.stringify(raw.zp_dtype)} is not supported (compressed-tensors' default for these arguments only)`,
    );
  const block = raw.block_structure ?? null;
  return {
    numBits,
    type,
    symmetric: raw.symmetric ?? true,
    strategy,
    groupSize: strategy === "channel" ? null : groupSize,
    dynamic: raw.dynamic === "local" ? "local" : raw.dynamic === true,
    actorder: null,
    blockStructure: Array.isArray(block) ? (block as [number, number]) : null,
  } as QuantArgs;
}

function describe(a: QuantArgs | null): string {
  if (!a) return "none";
  const per = a.strategy === "group" || a.strategy === "tensor_group" ? `${a.strategy} of ${a.groupSize}` : a.strategy;
  const block = a.blockStructure ? ` ${a.blockStructure.join("x")}` : "";
  return `${a.type} ${a.numBits}-bit ${a.symmetric ? "symmetric" : "asymmetric"} per ${per}${block}${a.dynamic ? ` dynamic${a.dynamic === "local" ? " (local)" : ""}` : ""}`;
}

/** Whether `a` is the preset's `p`, a group size aside where the preset's groups may be resized (int groups). */
function sameArgs(a: QuantArgs | null, p: QuantArgs | null, resizable: boolean): boolean {
  if (a === null || p === null) return a === p;
  return (
    a.numBits === p.numBits &&
    a.type === p.type &&
    a.symmetric === p.symmetric &&
    a.strategy === p.strategy &&
    a.dynamic === p.dynamic &&
    (resizable || a.groupSize === p.groupSize) &&
    JSON.stringify(a.blockStructure ?? null) === JSON.stringify(p.blockStructure ?? null)
  );
}

/**
 * The preset a config group (or a modifier's scheme dict) describes, with its group size and the
 * GPTQ column order `actorder` (null for round-to-nearest).
 */
export function schemeOfGroup(group: Dict, where: string, actorder: ActOrder): Scheme {
  if (group.output_activations !== undefined && group.output_activations !== null)
    throw new UsageError(`${where}.output_activations: output activation quantization is not supported`);
  const weights = quantArgs(group.weights, `${where}.weights`);
  const inputs =
    group.input_activations === undefined || group.input_activations === null
      ? null
      : quantArgs(group.input_activations, `${where}.input_activations`);
  for (const name of SCHEME_NAMES) {
    const preset = resolveScheme(name);
    const resizable = preset.weights.type === "int" && preset.weights.strategy === "group";
    if (!sameArgs(weights, preset.weights, resizable) || !sameArgs(inputs, preset.inputActivations, false)) continue;
    if (group.format !== undefined && group.format !== null && group.format !== preset.format)
      throw new UsageError(
        `${where}.format: ${JSON.stringify(group.format)} is not the format of these arguments (${preset.format}, scheme ${name})`,
      );
    return resolveScheme(name, { groupSize: resizable ? (weights.groupSize ?? undefined) : undefined, actorder });
  }
  throw new UsageError(
    `${where}: weights ${describe(weights)}, input activations ${describe(inputs)} is not a scheme moecal implements (${SCHEME_NAMES.join(", ")}; int group sizes may differ)`,
  );
}

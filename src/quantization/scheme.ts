import { UsageError } from "../errors.js";
import { matchName } from "./match.js";

export type QuantType = "int" | "float";
export type QuantStrategy = "group" | "channel" | "tensor" | "token" | "tensor_group" | "block";
export type ActOrder = "static" | null;
export type QuantFormat = "pack-quantized" | "int-quantized" | "float-quantized" | "nvfp4-pack-quantized" | "mxfp4-pack-quantized";

/** Quantization arguments, as compressed-tensors' QuantizationArgs. */
export interface QuantArgs {
  numBits: number;
  type: QuantType;
  symmetric: boolean;
  strategy: QuantStrategy;
  groupSize: number | null;
  /** "local": scales computed per group at run time under a static global scale (NVFP4 activations) */
  dynamic: boolean | "local";
  /** GPTQ column order (weights only) */
  actorder: ActOrder;
  /** [rows, columns] of one scale's block (strategy "block") */
  blockStructure?: [number, number] | null;
}

/** Weights FP4 E2M1 in groups of 16 with FP8 group scales under one global scale per Linear (NVFP4). */
export function isNvfp4(a: QuantArgs): boolean {
  return a.type === "float" && a.numBits === 4 && a.strategy === "tensor_group";
}

/** Weights FP4 E2M1 in groups of 32 with power-of-two (E8M0) group scales (MXFP4). */
export function isMxfp4(a: QuantArgs): boolean {
  return a.type === "float" && a.numBits === 4 && a.strategy === "group";
}

export interface Scheme {
  name: SchemeName;
  weights: QuantArgs;
  inputActivations: QuantArgs | null;
  format: QuantFormat;
}

export const SCHEME_NAMES = [
  "W4A16",
  "W4A16_ASYM",
  "W8A16",
  "W8A8",
  "FP8_DYNAMIC",
  "FP8",
  "NVFP4A16",
  "NVFP4",
  "FP8_BLOCK",
  "MXFP4A16",
] as const;
export type SchemeName = (typeof SCHEME_NAMES)[number];

const intGroup = (bits: number, symmetric: boolean): QuantArgs => ({
  numBits: bits,
  type: "int",
  symmetric,
  strategy: "group",
  groupSize: 128,
  dynamic: false,
  actorder: "static",
});

function fp4Group(): QuantArgs {
  return { numBits: 4, type: "float", symmetric: true, strategy: "tensor_group", groupSize: 16, dynamic: false, actorder: "static" };
}

const PRESETS: Record<SchemeName, Omit<Scheme, "name">> = {
  W4A16: { weights: intGroup(4, true), inputActivations: null, format: "pack-quantized" },
  W4A16_ASYM: { weights: intGroup(4, false), inputActivations: null, format: "pack-quantized" },
  W8A16: { weights: intGroup(8, true), inputActivations: null, format: "pack-quantized" },
  W8A8: {
    weights: { numBits: 8, type: "int", symmetric: true, strategy: "channel", groupSize: null, dynamic: false, actorder: null },
    inputActivations: { numBits: 8, type: "int", symmetric: true, strategy: "token", groupSize: null, dynamic: true, actorder: null },
    format: "int-quantized",
  },
  FP8_DYNAMIC: {
    weights: { numBits: 8, type: "float", symmetric: true, strategy: "channel", groupSize: null, dynamic: false, actorder: null },
    inputActivations: { numBits: 8, type: "float", symmetric: true, strategy: "token", groupSize: null, dynamic: true, actorder: null },
    format: "float-quantized",
  },
  FP8: {
    weights: { numBits: 8, type: "float", symmetric: true, strategy: "tensor", groupSize: null, dynamic: false, actorder: null },
    inputActivations: { numBits: 8, type: "float", symmetric: true, strategy: "tensor", groupSize: null, dynamic: false, actorder: null },
    format: "float-quantized",
  },
  NVFP4A16: { weights: fp4Group(), inputActivations: null, format: "nvfp4-pack-quantized" },
  NVFP4: {
    weights: fp4Group(),
    inputActivations: { ...fp4Group(), dynamic: "local", actorder: null },
    format: "nvfp4-pack-quantized",
  },
  MXFP4A16: { weights: { ...fp4Group(), strategy: "group", groupSize: 32 }, inputActivations: null, format: "mxfp4-pack-quantized" },
  FP8_BLOCK: {
    weights: {
      numBits: 8,
      type: "float",
      symmetric: true,
      strategy: "block",
      groupSize: null,
      dynamic: false,
      actorder: null,
      blockStructure: [128, 128],
    },
    inputActivations: { numBits: 8, type: "float", symmetric: true, strategy: "group", groupSize: 128, dynamic: true, actorder: null },
    format: "float-quantized",
  },
};

export interface SchemeOverrides {
  /** group size for group-strategy schemes */
  groupSize?: number;
  /** GPTQ activation order for group/channel weights ("static" default, or null) */
  actorder?: ActOrder;
}

/** A preset by llm-compressor's name, with overrides. */
export function resolveScheme(name: string, overrides: SchemeOverrides = {}): Scheme {
  const key = name.toUpperCase() as SchemeName;
  const preset = PRESETS[key];
  if (!preset) throw new UsageError(`unknown scheme "${name}" (known: ${SCHEME_NAMES.join(", ")})`);
  const weights = { ...preset.weights };
  if (overrides.groupSize !== undefined) {
    if (hasFixedGroups(weights) && overrides.groupSize !== weights.groupSize)
      throw new UsageError(
        `scheme ${key} has groups of ${weights.groupSize} by definition; --group-size ${overrides.groupSize} does not apply`,
      );
    if (weights.strategy !== "group" && weights.strategy !== "tensor_group")
      throw new UsageError(`scheme ${key} quantizes weights per ${weights.strategy}; a group size does not apply`);
    if (!Number.isInteger(overrides.groupSize) || overrides.groupSize < 1)
      throw new UsageError(`group size must be a positive integer, got ${overrides.groupSize}`);
    weights.groupSize = overrides.groupSize;
  }
  if (overrides.actorder !== undefined && takesActorder(weights)) weights.actorder = overrides.actorder;
  return { name: key, weights, inputActivations: preset.inputActivations ? { ...preset.inputActivations } : null, format: preset.format };
}

/** Whether a scheme's input activations need a scale calibrated from data (FP8's static input scale, NVFP4's input global scale). */
export function hasStaticActivationScales(scheme: Pick<Scheme, "inputActivations">): boolean {
  const ia = scheme.inputActivations;
  return ia !== null && (!ia.dynamic || ia.dynamic === "local");
}

/** FP4 formats (NVFP4: 16, MXFP4: 32) define their group size; it is never changed. */
export function hasFixedGroups(a: QuantArgs): boolean {
  return a.type === "float" && a.numBits === 4;
}

/** GPTQ's activation order applies to group-wise weights (int groups and channels, NVFP4's groups). */
export function takesActorder(a: QuantArgs): boolean {
  return a.type === "int" || isNvfp4(a) || isMxfp4(a);
}

/**
 * llm-compressor's matching: a plain entry matches the full name; "re:PATTERN" matches when
 * PATTERN matches at the start of the name (Python's re.match).
 */
export function matchesAny(name: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => matchName(name, p));
}

export function validatePatterns(patterns: readonly string[], what = "ignore pattern"): void {
  for (const p of patterns) {
    if (!p.startsWith("re:")) continue;
    try {
      new RegExp(p.slice(3));
    } catch (cause) {
      throw new UsageError(`${what} "${p}" is not a valid regular expression (${(cause as Error).message})`, { cause });
    }
  }
}

function argsJson(a: QuantArgs, isWeight: boolean): Record<string, unknown> {
  const j: Record<string, unknown> = {
    actorder: isWeight ? a.actorder : null,
    block_structure: a.blockStructure ?? null,
    dynamic: a.dynamic,
    group_size: a.groupSize,
    num_bits: a.numBits,
    observer: a.dynamic === "local" ? "static_minmax" : a.dynamic ? null : "minmax",
    observer_kwargs: {},
    strategy: a.strategy,
    symmetric: a.symmetric,
    type: a.type,
  };
  return j;
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

/** The `quantization_config` block of config.json (keys sorted). */
export function quantizationConfig(scheme: Scheme, ignore: string[], actorderUsed: ActOrder): Record<string, unknown> {
  return groupsConfig([{ targets: ["Linear"], scheme, actorder: actorderUsed }], ignore);
}

/**
 * compressed-tensors' quantization_config with a config group per scheme (`group_0`, ... in order,
 * each with its targets and its format); the top-level format is the groups' when they share one,
 * else "mixed-precision" (as compressed-tensors writes a checkpoint of several formats:
 * quantization/quant_config.py `from_pretrained` and `merge` at ac8e2ba).
 */
export function groupsConfig(
  groups: readonly { targets: readonly string[]; scheme: Scheme; actorder: ActOrder }[],
  ignore: string[],
): Record<string, unknown> {
  const formats = new Set(groups.map((g) => g.scheme.format));
  return sortKeys({
    config_groups: Object.fromEntries(
      groups.map(({ targets, scheme, actorder }, k) => [
        `group_${k}`,
        {
          format: scheme.format,
          input_activations: scheme.inputActivations ? argsJson(scheme.inputActivations, false) : null,
          output_activations: null,
          targets: [...targets],
          weights: { ...argsJson(scheme.weights, true), actorder: takesActorder(scheme.weights) ? actorder : null },
        },
      ]),
    ),
    format: formats.size === 1 ? [...formats][0] : "mixed-precision",
    global_compression_ratio: null,
    ignore,
    kv_cache_scheme: null,
    quant_method: "compressed-tensors",
    quantization_status: "compressed",
    sparsity_config: {},
    transform_config: {},
    version: "0.13.0",
  }) as Record<string, unknown>;
}

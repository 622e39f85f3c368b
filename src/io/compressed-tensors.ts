/**
 * Reading compressed-tensors checkpoints: `quantization_config` validated, the config group of
 * each Linear, and a tensor source that presents every quantized Linear's weight dequantized.
 */
import { schemeFor } from "../quantization/match.js";
import { z } from "zod";
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError } from "../errors.js";
import type { RawAccess } from "./checkpoint.js";
import { type RawTensor, rawToF32, rawToInts } from "./safetensors.js";
import type { TensorSource } from "./tensor-source.js";
import { unpackColumns, unpackFp4, unpackRows } from "../quantization/pack.js";
import { type QParams, dequantize } from "../quantization/params.js";
import { type QuantArgs, type QuantFormat, validatePatterns } from "../quantization/scheme.js";

/** Tensor suffixes a quantized Linear carries in `format` (after `P.`), as the spec lists them. */
export function requiredSuffixes(format: QuantFormat, weights: QuantArgs, inputActivations: QuantArgs | null): string[] {
  if (format === "mxfp4-pack-quantized") return ["weight_packed", "weight_scale"];
  if (format === "nvfp4-pack-quantized") {
    const need = ["weight_packed", "weight_scale", "weight_global_scale"];
    if (inputActivations && inputActivations.dynamic !== true) need.push("input_global_scale");
    return need;
  }
  const need = format === "pack-quantized" ? ["weight_packed", "weight_scale", "weight_shape"] : ["weight", "weight_scale"];
  if (format === "pack-quantized" && !weights.symmetric) need.push("weight_zero_point");
  if (inputActivations && !inputActivations.dynamic) need.push("input_scale");
  return need;
}

/** The parts of `quantization_config` the loader needs. */
export interface QuantConfigGroup {
  targets: string[];
  weights: QuantArgs;
  inputActivations: QuantArgs | null;
  format: QuantFormat;
}

const argsSchema = z
  .object({
    num_bits: z.number().int().min(1).max(8),
    type: z.enum(["int", "float"]),
    symmetric: z.boolean().nullable().optional(),
    strategy: z.enum(["tensor", "channel", "group", "token", "tensor_group", "block"]).nullable().optional(),
    group_size: z.number().int().positive().nullable().optional(),
    dynamic: z
      .union([z.boolean(), z.literal("local")])
      .nullable()
      .optional(),
    block_structure: z.tuple([z.number().int().positive(), z.number().int().positive()]).nullable().optional(),
    actorder: z
      .union([z.enum(["static", "group", "weight"]), z.boolean()])
      .nullable()
      .optional(),
  })
  .passthrough();

const FORMATS: readonly QuantFormat[] = [
  "pack-quantized",
  "int-quantized",
  "float-quantized",
  "nvfp4-pack-quantized",
  "mxfp4-pack-quantized",
];

const configSchema = z
  .object({
    quant_method: z.literal("compressed-tensors"),
    format: z.string().optional(),
    config_groups: z.record(
      z.string(),
      z
        .object({
          targets: z.array(z.string()).min(1),
          weights: argsSchema,
          input_activations: argsSchema.nullable().optional(),
          format: z.string().nullable().optional(),
        })
        .passthrough(),
    ),
    ignore: z.array(z.string()).nullable().optional(),
  })
  .passthrough();

function argsFrom(a: z.infer<typeof argsSchema>): QuantArgs {
  return {
    numBits: a.num_bits,
    type: a.type,
    symmetric: a.symmetric !== false,
    strategy: a.strategy ?? "tensor",
    groupSize: a.group_size ?? null,
    dynamic: a.dynamic === "local" ? "local" : a.dynamic === true,
    actorder: a.actorder === "static" ? "static" : null,
    blockStructure: a.block_structure ?? null,
  };
}

export interface ParsedQuantConfig {
  groups: QuantConfigGroup[];
  /** as written: the checkpoint's names and patterns over them */
  ignore: string[];
  /**
   * a model name's name in the checkpoint (Qwen3.5's model.language_model.*), which the config's
   * targets and ignore list are matched against, as compressed-tensors and vLLM match them
   */
  storedName?: (name: string) => string;
}

/** Validate config.json's `quantization_config` (compressed-tensors); a bad field is named. */
export function parseQuantizationConfig(qc: unknown, where: string): ParsedQuantConfig {
  const r = configSchema.safeParse(qc);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new CheckpointFormatError(
      `${where}: quantization_config field "${issue?.path.join(".") || "(root)"}": ${issue?.message ?? "invalid"}`,
    );
  }
  const q = r.data;
  const groups = Object.entries(q.config_groups).map(([gname, g]) => {
    const field = `${where}: quantization_config field "config_groups.${gname}`;
    const format = g.format ?? q.format;
    if (!FORMATS.includes(format as QuantFormat))
      throw new CheckpointFormatError(
        `${field}.format": ${JSON.stringify(format ?? null)} is not a format moecal reads (${FORMATS.join(", ")})`,
      );
    const weights = argsFrom(g.weights);
    if ((weights.strategy === "group" || weights.strategy === "tensor_group") && weights.groupSize === null)
      throw new CheckpointFormatError(`${field}.weights.group_size": the ${weights.strategy} strategy needs a group size`);
    if ((weights.strategy === "block") !== (weights.blockStructure !== null && weights.blockStructure !== undefined))
      throw new CheckpointFormatError(`${field}.weights.block_structure": the block strategy needs a block structure, and only it`);
    if (format === "nvfp4-pack-quantized" && !(weights.type === "float" && weights.numBits === 4 && weights.groupSize === 16))
      throw new CheckpointFormatError(`${field}.weights": nvfp4-pack-quantized needs float weights of 4 bits in groups of 16`);
    if (
      format === "mxfp4-pack-quantized" &&
      !(weights.type === "float" && weights.numBits === 4 && weights.groupSize === 32 && weights.strategy === "group")
    )
      throw new CheckpointFormatError(`${field}.weights": mxfp4-pack-quantized needs float weights of 4 bits in groups of 32`);
    if (!(format as QuantFormat).endsWith("fp4-pack-quantized") && weights.type === "float" && weights.numBits !== 8)
      throw new CheckpointFormatError(`${field}.weights.num_bits": ${format} float weights are FP8 (8 bits)`);
    if (weights.strategy === "token")
      throw new CheckpointFormatError(`${field}.weights.strategy": "token" applies to activations, not weights`);
    if (format === "pack-quantized" && (weights.type !== "int" || 32 % weights.numBits !== 0))
      throw new CheckpointFormatError(`${field}.weights": pack-quantized needs int weights of 1, 2, 4 or 8 bits`);
    try {
      validatePatterns(g.targets);
    } catch (cause) {
      throw new CheckpointFormatError(`${field}.targets": ${(cause as Error).message}`, { cause });
    }
    return {
      targets: g.targets,
      weights,
      inputActivations: g.input_activations ? argsFrom(g.input_activations) : null,
      format: format as QuantFormat,
    };
  });
  const ignore = q.ignore ?? [];
  try {
    validatePatterns(ignore);
  } catch (cause) {
    throw new CheckpointFormatError(`${where}: quantization_config field "ignore": ${(cause as Error).message}`, { cause });
  }
  return { groups, ignore };
}

/** The config group that applies to Linear `name`, by compressed-tensors' rule (exact name, then regex, then class: quantization/match.ts). */
export function groupFor(cfg: ParsedQuantConfig, name: string): QuantConfigGroup | null {
  return schemeFor(cfg.groups, cfg.ignore, cfg.storedName ? cfg.storedName(name) : name);
}

const SUFFIXES = [
  ".weight_packed",
  ".weight_scale",
  ".weight_shape",
  ".weight_zero_point",
  ".input_scale",
  ".weight_global_scale",
  ".input_global_scale",
];

/**
 * A TensorSource over a compressed-tensors checkpoint that presents every quantized Linear's
 * weight as a dequantized float32 `P.weight`; other tensors read unchanged.
 */
export function compressedTensorsSource(
  ck: RawAccess,
  cfg: ParsedQuantConfig,
): TensorSource & { inputScale(name: string): number | null; quantized: ReadonlySet<string> } {
  const names = new Set(ck.names());
  const quantized = new Map<string, QuantConfigGroup>();
  for (const n of names) {
    if (!n.endsWith(".weight_scale")) continue;
    const p = n.slice(0, -".weight_scale".length);
    const g = groupFor(cfg, p);
    if (!g) throw new CheckpointFormatError(`${ck.dir}: "${p}" has a weight_scale but no quantization config group applies to it`);
    quantized.set(`${p}.weight`, g);
  }
  const visible = [...names].filter((n) => !SUFFIXES.some((s) => n.endsWith(s)) && !quantized.has(n)).concat([...quantized.keys()]);
  const read = (n: string): RawTensor => ck.readRaw(n);
  const where = (n: string): string => `${ck.dir}: tensor "${n}"`;
  const shapeOf = (n: string): number[] => {
    const g = quantized.get(n);
    if (!g) return ck.info(n).shape;
    const p = n.slice(0, -".weight".length);
    if (g.format === "pack-quantized") return rawToInts(read(`${p}.weight_shape`), where(`${p}.weight_shape`));
    if (g.format.endsWith("fp4-pack-quantized")) {
      const [rows, half] = ck.info(`${p}.weight_packed`).shape as [number, number];
      return [rows, 2 * half];
    }
    return ck.info(n).shape;
  };
  const f32 = (n: string): Tensor => rawToF32(read(n), where(n));
  const scalar = (n: string): number | null => (names.has(n) ? (f32(n).data[0] as number) : null);
  return {
    dir: ck.dir,
    quantized: new Set(quantized.keys()),
    names: () => visible,
    shapeOf,
    inputScale: (p) => scalar(`${p}.input_scale`) ?? scalar(`${p}.input_global_scale`),
    readF32: (n) => {
      const g = quantized.get(n);
      if (!g) return rawToF32(read(n), where(n));
      const p = n.slice(0, -".weight".length);
      const [out, inF] = shapeOf(n) as [number, number];
      if (g.format === "mxfp4-pack-quantized") {
        const codes = unpackFp4(read(`${p}.weight_packed`).bytes, out, inF);
        const e = rawToInts(read(`${p}.weight_scale`), where(`${p}.weight_scale`));
        const params: QParams = {
          groups: e.length / out,
          groupSize: 32,
          scale: Float32Array.from(e, (x) => 2 ** (x - 127)),
          zeroPoint: null,
        };
        return new Tensor(dequantize({ args: g.weights, out, inF, codes, params }), [out, inF]);
      }
      const scale = f32(`${p}.weight_scale`);
      if (g.format === "nvfp4-pack-quantized") {
        const global = scalar(`${p}.weight_global_scale`) as number;
        const codes = unpackFp4(read(`${p}.weight_packed`).bytes, out, inF);
        const params: QParams = {
          groups: scale.dim(-1),
          groupSize: 16,
          scale: scale.data.map((s) => Math.fround(s / global)),
          zeroPoint: null,
        };
        return new Tensor(dequantize({ args: g.weights, out, inF, codes, params }), [out, inF]);
      }
      if (g.weights.strategy === "block") {
        const [br, bc] = g.weights.blockStructure as [number, number];
        const cols = scale.dim(-1);
        const perRow = new Float32Array(out * cols);
        for (let r = 0; r < out; r++) perRow.set(scale.data.subarray(Math.floor(r / br) * cols, (Math.floor(r / br) + 1) * cols), r * cols);
        const params: QParams = { groups: cols, groupSize: bc, scale: perRow, zeroPoint: null };
        return new Tensor(dequantize({ args: g.weights, out, inF, codes: read(n).bytes, params }), [out, inF]);
      }
      const groups = scale.size === 1 ? 1 : scale.dim(-1);
      const full = scale.size === 1 ? new Float32Array(out).fill(scale.data[0] as number) : scale.data;
      let codes: Int8Array | Uint8Array;
      let zeroPoint: Int32Array | null = null;
      if (g.format === "pack-quantized") {
        const packed = new Int32Array(rawToInts(read(`${p}.weight_packed`), where(`${p}.weight_packed`)));
        codes = unpackRows(packed, out, inF, g.weights.numBits);
        if (names.has(`${p}.weight_zero_point`)) {
          const zp = new Int32Array(rawToInts(read(`${p}.weight_zero_point`), where(`${p}.weight_zero_point`)));
          zeroPoint = Int32Array.from(unpackColumns(zp, out, groups, g.weights.numBits));
        }
      } else {
        const raw = read(n);
        codes = raw.dtype === "F8_E4M3" ? raw.bytes : new Int8Array(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength);
      }
      const args = { ...g.weights, type: g.format === "float-quantized" ? ("float" as const) : ("int" as const) };
      const W = dequantize({ args, out, inF, codes, params: { groups, groupSize: inF / groups, scale: full, zeroPoint } });
      return new Tensor(W, [out, inF]);
    },
  };
}

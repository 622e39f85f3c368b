import { f32ToBf16, f32ToF16 } from "../engine/dtype.js";
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError } from "../errors.js";
import { Checkpoint } from "../io/checkpoint.js";
import { DType, RawTensor, rawToF32, rawToInts } from "../io/safetensors.js";
import { NamedRaw } from "../io/writer.js";
import { TensorSource } from "../models/afmoe/weights.js";
import { packColumns, packRows, unpackColumns, unpackRows } from "../quantization/pack.js";
import { QuantizedWeight, ScaleDType, dequantize } from "../quantization/params.js";
import { QuantArgs, QuantFormat, matchesAny } from "../quantization/scheme.js";

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Values (already representable in dtype) as raw bytes of that dtype. */
export function encodeFloats(values: Float32Array, dtype: ScaleDType): Uint8Array {
  if (dtype === "BF16") return bytesOf(f32ToBf16(values));
  if (dtype === "F16") return bytesOf(f32ToF16(values));
  return bytesOf(new Float32Array(values));
}

/**
 * The tensors of one quantized Linear `P` in a compressed-tensors format:
 * pack-quantized: P.weight_packed, P.weight_scale, P.weight_shape (+ P.weight_zero_point);
 * int-quantized: P.weight (I8), P.weight_scale [out, 1];
 * float-quantized: P.weight (F8_E4M3), P.weight_scale [out, 1] or [1] (+ P.input_scale [1]).
 */
export function quantizedLinearTensors(
  name: string,
  q: QuantizedWeight,
  format: QuantFormat,
  scaleDType: ScaleDType,
  inputScale: number | null = null,
): NamedRaw[] {
  const { out, inF, params, args } = q;
  const perTensor = args.strategy === "tensor";
  const scaleVals = perTensor ? params.scale.subarray(0, 1) : params.scale;
  const scaleShape = perTensor ? [1] : [out, params.groups];
  const scale: NamedRaw = { name: `${name}.weight_scale`, dtype: scaleDType, shape: scaleShape, bytes: encodeFloats(new Float32Array(scaleVals), scaleDType) };
  const extra: NamedRaw[] = inputScale === null ? [] : [{ name: `${name}.input_scale`, dtype: scaleDType, shape: [1], bytes: encodeFloats(new Float32Array([inputScale]), scaleDType) }];
  if (format === "pack-quantized") {
    const b = args.numBits;
    const packed = packRows(q.codes, out, inF, b);
    const tensors: NamedRaw[] = [
      { name: `${name}.weight_packed`, dtype: "I32", shape: [out, packed.length / out], bytes: bytesOf(packed) },
      scale,
      { name: `${name}.weight_shape`, dtype: "I64", shape: [2], bytes: bytesOf(new BigInt64Array([BigInt(out), BigInt(inF)])) },
    ];
    if (params.zeroPoint) {
      const zp = packColumns(params.zeroPoint, out, params.groups, b);
      tensors.push({ name: `${name}.weight_zero_point`, dtype: "I32", shape: [zp.length / params.groups, params.groups], bytes: bytesOf(zp) });
    }
    return [...tensors, ...extra];
  }
  const dtype: DType = format === "int-quantized" ? "I8" : "F8_E4M3";
  return [{ name: `${name}.weight`, dtype, shape: [out, inF], bytes: bytesOf(q.codes) }, scale, ...extra];
}

/** Tensor suffixes a quantized Linear carries in `format` (after `P.`), as the spec lists them. */
export function requiredSuffixes(format: QuantFormat, weights: QuantArgs, inputActivations: QuantArgs | null): string[] {
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

function argsFrom(j: unknown, where: string): QuantArgs | null {
  if (j === null || j === undefined) return null;
  const a = j as Record<string, unknown>;
  const bits = a.num_bits;
  if (typeof bits !== "number" || (a.type !== "int" && a.type !== "float")) throw new CheckpointFormatError(`${where}: invalid quantization args`);
  return {
    numBits: bits,
    type: a.type,
    symmetric: a.symmetric !== false,
    strategy: (a.strategy as QuantArgs["strategy"]) ?? "tensor",
    groupSize: typeof a.group_size === "number" ? a.group_size : null,
    dynamic: a.dynamic === true,
    actorder: a.actorder === "static" ? "static" : null,
  };
}

export interface ParsedQuantConfig {
  groups: QuantConfigGroup[];
  ignore: string[];
}

export function parseQuantizationConfig(qc: unknown, where: string): ParsedQuantConfig {
  const q = qc as { config_groups?: Record<string, Record<string, unknown>>; ignore?: unknown; format?: unknown; quant_method?: unknown } | null;
  if (!q || q.quant_method !== "compressed-tensors" || typeof q.config_groups !== "object") {
    throw new CheckpointFormatError(`${where}: quantization_config is not a compressed-tensors config`);
  }
  const groups = Object.entries(q.config_groups).map(([gname, g]) => {
    const w = argsFrom(g.weights, `${where}: config_groups.${gname}.weights`);
    if (!w) throw new CheckpointFormatError(`${where}: config_groups.${gname} has no weights`);
    return {
      targets: Array.isArray(g.targets) ? (g.targets as string[]) : ["Linear"],
      weights: w,
      inputActivations: argsFrom(g.input_activations, `${where}: config_groups.${gname}.input_activations`),
      format: ((g.format as QuantFormat | undefined) ?? (q.format as QuantFormat)) as QuantFormat,
    };
  });
  return { groups, ignore: Array.isArray(q.ignore) ? (q.ignore as string[]) : [] };
}

/** The config group that applies to Linear `name` (targets by class "Linear" or name). */
export function groupFor(cfg: ParsedQuantConfig, name: string): QuantConfigGroup | null {
  if (matchesAny(name, cfg.ignore)) return null;
  return cfg.groups.find((g) => g.targets.includes("Linear") || matchesAny(name, g.targets)) ?? null;
}

const SUFFIXES = [".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point", ".input_scale"];

/**
 * A TensorSource over a compressed-tensors checkpoint that presents every quantized Linear's
 * weight as a dequantized float32 `P.weight`; other tensors read unchanged.
 */
export function compressedTensorsSource(ck: Checkpoint, cfg: ParsedQuantConfig): TensorSource & { inputScale(name: string): number | null } {
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
    return ck.info(n).shape;
  };
  return {
    dir: ck.dir,
    names: () => visible,
    shapeOf,
    inputScale: (p) => (names.has(`${p}.input_scale`) ? (ck.readF32(`${p}.input_scale`).data[0] as number) : null),
    readF32: (n) => {
      const g = quantized.get(n);
      if (!g) return rawToF32(read(n), where(n));
      const p = n.slice(0, -".weight".length);
      const [out, inF] = shapeOf(n) as [number, number];
      const scale = ck.readF32(`${p}.weight_scale`);
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

import { f32ToBf16, f32ToF16, f32ToFp8e4m3 } from "../engine/dtype.js";
import type { DType } from "../io/safetensors.js";
import { type NamedRaw, bytesOf } from "../io/writer.js";
import { packColumns, packFp4, packRows } from "../quantization/pack.js";
import { InternalError } from "../errors.js";
import type { QuantizedWeight, ScaleDType } from "../quantization/params.js";
import type { QuantFormat } from "../quantization/scheme.js";

/** Values (already representable in dtype) as raw bytes of that dtype. */
function encodeFloats(values: Float32Array, dtype: ScaleDType): Uint8Array {
  if (dtype === "BF16") return bytesOf(f32ToBf16(values));
  if (dtype === "F16") return bytesOf(f32ToF16(values));
  return bytesOf(new Float32Array(values));
}

/** float32 values as e4m3fn bytes (a loop: Uint8Array.from with a mapping function is several times slower). */
function fp8Bytes(values: Float32Array): Uint8Array {
  const out = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToFp8e4m3(values[i] as number);
  return out;
}

/**
 * The tensors of one quantized Linear `P` in a compressed-tensors format:
 * pack-quantized: P.weight_packed, P.weight_scale, P.weight_shape (+ P.weight_zero_point);
 * int-quantized: P.weight (I8), P.weight_scale [out, 1];
 * float-quantized: P.weight (F8_E4M3), P.weight_scale [out, 1], [1] or per block
 *   [ceil(out / 128), ceil(in / 128)] (+ P.input_scale [1]);
 * mxfp4-pack-quantized: P.weight_packed (U8 [out, in / 2]), P.weight_scale (U8 E8M0 exponents [out, in / 32]);
 * nvfp4-pack-quantized: P.weight_packed (U8 [out, in / 2]), P.weight_scale (F8_E4M3 [out, in / 16]),
 *   P.weight_global_scale (F32 [1]) (+ P.input_global_scale F32 [1]).
 * `inputScale` is FP8's static input scale, or NVFP4's input global scale.
 */
export function quantizedLinearTensors(
  name: string,
  q: QuantizedWeight,
  format: QuantFormat,
  scaleDType: ScaleDType,
  inputScale: number | null = null,
): NamedRaw[] {
  const { out, inF, params, args } = q;
  if (format === "nvfp4-pack-quantized") return nvfp4Tensors(name, q, inputScale);
  if (format === "mxfp4-pack-quantized")
    return [
      { name: `${name}.weight_packed`, dtype: "U8", shape: [out, inF / 2], bytes: packFp4(q.codes, out, inF) },
      // E8M0: the biased exponent of each power-of-two scale
      {
        name: `${name}.weight_scale`,
        dtype: "U8",
        shape: [out, params.groups],
        bytes: Uint8Array.from(params.scale, (s) => Math.log2(s) + 127),
      },
    ];
  if (args.strategy === "block") return blockTensors(name, q, scaleDType, inputScale);
  const perTensor = args.strategy === "tensor";
  const scaleVals = perTensor ? params.scale.subarray(0, 1) : params.scale;
  const scaleShape = perTensor ? [1] : [out, params.groups];
  const scale: NamedRaw = {
    name: `${name}.weight_scale`,
    dtype: scaleDType,
    shape: scaleShape,
    bytes: encodeFloats(new Float32Array(scaleVals), scaleDType),
  };
  const extra: NamedRaw[] = inputScale === null ? [] : [inputScaleTensor(name, format, scaleDType, inputScale)];
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
      tensors.push({
        name: `${name}.weight_zero_point`,
        dtype: "I32",
        shape: [zp.length / params.groups, params.groups],
        bytes: bytesOf(zp),
      });
    }
    return [...tensors, ...extra];
  }
  const dtype: DType = format === "int-quantized" ? "I8" : "F8_E4M3";
  return [{ name: `${name}.weight`, dtype, shape: [out, inF], bytes: bytesOf(q.codes) }, scale, ...extra];
}

function nvfp4Tensors(name: string, q: QuantizedWeight, inputGlobalScale: number | null): NamedRaw[] {
  const { out, inF, params } = q;
  const nv = params.nvfp4;
  if (!nv) throw new InternalError(`${name}: NVFP4 weight without its FP8 group scales and global scale`);
  const tensors: NamedRaw[] = [
    { name: `${name}.weight_packed`, dtype: "U8", shape: [out, inF / 2], bytes: packFp4(q.codes, out, inF) },
    { name: `${name}.weight_scale`, dtype: "F8_E4M3", shape: [out, params.groups], bytes: fp8Bytes(nv.groupScale) },
    { name: `${name}.weight_global_scale`, dtype: "F32", shape: [1], bytes: bytesOf(Float32Array.of(nv.globalScale[0] as number)) },
  ];
  if (inputGlobalScale !== null) tensors.push(inputScaleTensor(name, "nvfp4-pack-quantized", "F32", inputGlobalScale));
  return tensors;
}

/** FP8 with one scale per block: the scale of each block taken from its first row. */
function blockTensors(name: string, q: QuantizedWeight, scaleDType: ScaleDType, inputScale: number | null): NamedRaw[] {
  const { out, inF, params, args } = q;
  const [br] = args.blockStructure ?? [out, inF];
  const rowBlocks = Math.ceil(out / br);
  const scales = new Float32Array(rowBlocks * params.groups);
  for (let b = 0; b < rowBlocks; b++)
    scales.set(params.scale.subarray(b * br * params.groups, (b * br + 1) * params.groups), b * params.groups);
  const tensors: NamedRaw[] = [
    { name: `${name}.weight`, dtype: "F8_E4M3", shape: [out, inF], bytes: bytesOf(q.codes) },
    { name: `${name}.weight_scale`, dtype: scaleDType, shape: [rowBlocks, params.groups], bytes: encodeFloats(scales, scaleDType) },
  ];
  if (inputScale !== null) tensors.push(inputScaleTensor(name, "float-quantized", scaleDType, inputScale));
  return tensors;
}

/** A Linear's static input scale tensor: NVFP4's input global scale (F32), else FP8's or INT8's input scale (in the scale dtype). */
export function inputScaleTensor(name: string, format: QuantFormat, scaleDType: ScaleDType, value: number): NamedRaw {
  if (format === "nvfp4-pack-quantized")
    return { name: `${name}.input_global_scale`, dtype: "F32", shape: [1], bytes: bytesOf(Float32Array.of(value)) };
  return { name: `${name}.input_scale`, dtype: scaleDType, shape: [1], bytes: encodeFloats(Float32Array.of(value), scaleDType) };
}

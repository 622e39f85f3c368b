import { f32ToBf16, f32ToF16 } from "../engine/dtype.js";
import type { DType } from "../io/safetensors.js";
import type { NamedRaw } from "../io/writer.js";
import { packColumns, packRows } from "../quantization/pack.js";
import type { QuantizedWeight, ScaleDType } from "../quantization/params.js";
import type { QuantFormat } from "../quantization/scheme.js";

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Values (already representable in dtype) as raw bytes of that dtype. */
function encodeFloats(values: Float32Array, dtype: ScaleDType): Uint8Array {
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
  const scale: NamedRaw = {
    name: `${name}.weight_scale`,
    dtype: scaleDType,
    shape: scaleShape,
    bytes: encodeFloats(new Float32Array(scaleVals), scaleDType),
  };
  const extra: NamedRaw[] =
    inputScale === null
      ? []
      : [{ name: `${name}.input_scale`, dtype: scaleDType, shape: [1], bytes: encodeFloats(new Float32Array([inputScale]), scaleDType) }];
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

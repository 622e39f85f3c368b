/**
 * A compressed-tensors checkpoint presented as a plain one (for oneshot: a quantized checkpoint
 * read as its source, e.g. FP8 or INT8 requantized to W4A16): each quantized Linear's `P.weight`
 * decoded from its codes and scales (float32 exactly; bytes of the model's torch_dtype when read
 * as bytes), its companion tensors (packed codes, scales, zero points, global and input scales)
 * left out; every other tensor as stored.
 */
import { f32ToBf16, f32ToF16 } from "../engine/dtype.js";
import { type Tensor, numel } from "../engine/tensor.js";
import type { DecodedWeights, RawAccess, StoredTensor } from "./checkpoint.js";
import { type ParsedQuantConfig, compressedTensorsSource } from "./compressed-tensors.js";
import { DTYPE_BYTES, type RawTensor, type TensorInfo } from "./safetensors.js";

type ModelDType = "BF16" | "F16" | "F32";

export class CompressedTensorsWeights implements DecodedWeights {
  private readonly source: ReturnType<typeof compressedTensorsSource>;
  private readonly presented: Set<string>;

  constructor(
    raw: RawAccess,
    cfg: ParsedQuantConfig,
    private readonly dtype: ModelDType,
  ) {
    this.source = compressedTensorsSource(raw, cfg);
    this.presented = new Set(this.source.names());
  }

  names(stored: readonly string[]): string[] {
    return [...stored.filter((n) => this.presented.has(n) && !this.has(n)), ...this.source.quantized];
  }

  has(name: string): boolean {
    return this.source.quantized.has(name);
  }

  hides(name: string): boolean {
    return !this.presented.has(name);
  }

  info(name: string): TensorInfo {
    const shape = this.source.shapeOf(name);
    return { name, dtype: this.dtype, shape, begin: 0, end: numel(shape) * DTYPE_BYTES[this.dtype] };
  }

  readF32(name: string): Tensor {
    return this.source.readF32(name);
  }

  private encode(w: Float32Array): Uint8Array {
    const enc = this.dtype === "BF16" ? f32ToBf16(w) : this.dtype === "F16" ? f32ToF16(w) : w;
    return new Uint8Array(enc.buffer, enc.byteOffset, enc.byteLength);
  }

  readRaw(name: string): RawTensor {
    const t = this.readF32(name);
    return { dtype: this.dtype, shape: [...t.shape], bytes: this.encode(t.data) };
  }

  *rawChunks(name: string, chunkBytes: number): Generator<Uint8Array> {
    const t = this.readF32(name);
    const cols = t.shape.at(-1) ?? 1;
    const rows = Math.max(1, Math.floor(chunkBytes / (cols * DTYPE_BYTES[this.dtype])));
    for (let r = 0; r * cols < t.size; r += rows) yield this.encode(t.data.subarray(r * cols, Math.min(t.size, (r + rows) * cols)));
  }

  readRowsRaw(name: string, rows: Int32Array): RawTensor {
    const t = this.readF32(name);
    const cols = t.shape.at(-1) ?? 1;
    const w = new Float32Array(rows.length * cols);
    rows.forEach((r, i) => {
      w.set(t.data.subarray(r * cols, (r + 1) * cols), i * cols);
    });
    return { dtype: this.dtype, shape: [rows.length, cols], bytes: this.encode(w) };
  }

  stored(name: string): StoredTensor {
    const t = this.readF32(name);
    return { raw: { dtype: "F32", shape: [...t.shape], bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) } };
  }
}

import type { Tensor } from "../engine/tensor.js";
import type { Checkpoint } from "./checkpoint.js";
import { type StoredLocation, rawToF32 } from "./safetensors.js";

/** A tensor source: a float32 tensor by checkpoint name (plain checkpoints or dequantizing loaders). */
export interface TensorSource {
  readonly dir: string;
  names(): string[];
  shapeOf(name: string): number[];
  /** float32 values, into `into` where the source can (a new array otherwise: check the result's data) */
  readF32(name: string, into?: Float32Array): Tensor;
  /** rows of a 2-D tensor by index, as float32 [rows.length, columns] (reading only those rows), where the source can */
  readRowsF32?(name: string, rows: Int32Array): Tensor;
  /** where a tensor's bytes lie, for a reader on another thread (loadParametersAsync), or null where the source must decode it */
  locate?(name: string): StoredLocation | null;
}

export function checkpointSource(ck: Checkpoint): TensorSource {
  return {
    dir: ck.dir,
    names: () => ck.names(),
    shapeOf: (n) => ck.info(n).shape,
    readF32: (n, into) => ck.readF32(n, into),
    readRowsF32: (n, rows) => rawToF32(ck.readRowsRaw(n, rows), `${ck.dir}: tensor "${n}"`),
    locate: (n) => ck.locate(n),
  };
}

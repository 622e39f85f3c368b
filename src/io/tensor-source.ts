import type { Tensor } from "../engine/tensor.js";
import type { Checkpoint } from "./checkpoint.js";
import { rawToF32 } from "./safetensors.js";

/** A tensor source: a float32 tensor by checkpoint name (plain checkpoints or dequantizing loaders). */
export interface TensorSource {
  readonly dir: string;
  names(): string[];
  shapeOf(name: string): number[];
  readF32(name: string): Tensor;
}

export function checkpointSource(ck: Checkpoint): TensorSource {
  return {
    dir: ck.dir,
    names: () => ck.names(),
    shapeOf: (n) => ck.info(n).shape,
    readF32: (n) => rawToF32(ck.readRaw(n), `${ck.dir}: tensor "${n}"`),
  };
}

import { InternalError } from "../errors.js";

/** A dense row-major float32 tensor. */
export class Tensor {
  readonly data: Float32Array;
  readonly shape: readonly number[];

  constructor(data: Float32Array, shape: readonly number[]) {
    const n = numel(shape);
    if (data.length !== n) {
      throw new InternalError(`tensor data has ${data.length} values but shape [${shape.join(", ")}] needs ${n}`);
    }
    this.data = data;
    this.shape = [...shape];
  }

  static zeros(shape: readonly number[]): Tensor {
    return new Tensor(new Float32Array(numel(shape)), shape);
  }

  get size(): number {
    return this.data.length;
  }

  /** Same data, new shape (no copy). */
  reshape(shape: readonly number[]): Tensor {
    return new Tensor(this.data, shape);
  }

  dim(i: number): number {
    const d = this.shape[i < 0 ? this.shape.length + i : i];
    if (d === undefined) throw new InternalError(`tensor of rank ${this.shape.length} has no dimension ${i}`);
    return d;
  }

  clone(): Tensor {
    return new Tensor(new Float32Array(this.data), this.shape);
  }
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Integer tensor (token ids, expert indices); values fit in a JS number. */
export interface IntTensor {
  readonly data: Int32Array;
  readonly shape: readonly number[];
}

export function intTensor(data: Int32Array, shape: readonly number[]): IntTensor {
  if (data.length !== numel(shape)) {
    throw new InternalError(`int tensor data has ${data.length} values but shape [${shape.join(", ")}] needs ${numel(shape)}`);
  }
  return { data, shape: [...shape] };
}

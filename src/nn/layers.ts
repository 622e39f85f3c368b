import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { add } from "../engine/ops.js";
import { withFloats } from "../engine/scratch.js";
import { InternalError, UsageError } from "../errors.js";
import { Module } from "./module.js";

/** y = x W^T (+ b). Input [..., in], output [..., out]. Parameters `weight` [out, in] and, with `bias`, `bias` [out]. */
export class Linear extends Module {
  readonly className: string = "Linear";
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly hasBias: boolean;

  constructor(inFeatures: number, outFeatures: number, opts: { bias?: boolean } = {}) {
    super();
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.hasBias = opts.bias ?? false;
    this.declareParam("weight", [outFeatures, inFeatures]);
    if (this.hasBias) this.declareParam("bias", [outFeatures]);
  }

  get weight(): Tensor {
    return this.param("weight");
  }

  forward(x: Tensor): Promise<Tensor> {
    return this.project(x);
  }

  /**
   * `call` with the output written into `into` (memory the caller owns, e.g. scratch it consumes
   * before giving it back) when no forward hook sees the output: the pre-hooks run as in `call`
   * and see the input only. With a forward hook, or a subclass's own forward, it is `call`.
   */
  async callInto(x: Tensor, into: Float32Array): Promise<Tensor> {
    if (this.postHookCount > 0 || this.forward !== Linear.prototype.forward) return this.call(x);
    return this.project(await this.runPreHooks(x), into);
  }

  private async project(x: Tensor, into?: Float32Array): Promise<Tensor> {
    const k = x.dim(-1);
    if (k !== this.inFeatures) throw new InternalError(`Linear: input has ${k} features, expected ${this.inFeatures}`);
    const rows = x.size / k;
    const y = await getEngine().linear(x.reshape([rows, k]), this.weight, into);
    if (this.hasBias) {
      const b = this.param("bias").data;
      const n = this.outFeatures;
      for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) y.data[r * n + j] = (y.data[r * n + j] as number) + (b[j] as number);
    }
    return y.reshape([...x.shape.slice(0, -1), this.outFeatures]);
  }
}

/** RMSNorm over the last dimension, in float32. Parameter `weight` [dim]. */
export class RMSNorm extends Module {
  readonly className: string = "RMSNorm";

  constructor(
    readonly dim: number,
    readonly eps: number,
  ) {
    super();
    this.declareParam("weight", [dim]);
  }

  async forward(x: Tensor): Promise<Tensor> {
    return this.forwardInto(x);
  }

  /** The norm of x, into `into` when given (what forward computes: a subclass's own norm overrides this). */
  forwardInto(x: Tensor, into?: Float32Array): Promise<Tensor> {
    return getEngine().rmsNorm(x, this.param("weight"), this.eps, into);
  }
}

/** x + norm(y), with norm's output in scratch memory unless something hooks the norm (a hook may keep its output). */
export async function addNormed(x: Tensor, norm: RMSNorm, y: Tensor): Promise<Tensor> {
  if (norm.hookCount > 0) return add(x, await norm.call(y));
  return withFloats([y.size] as const, async ([buf]) => add(x, await norm.forwardInto(y, buf)));
}

/** Token ids to rows of `weight` [vocab, dim]. Input: ids with their batch shape. */
export interface TokenIds {
  ids: Int32Array;
  shape: readonly number[];
}

export class Embedding extends Module<TokenIds, Tensor> {
  readonly className = "Embedding";

  constructor(
    readonly vocab: number,
    readonly dim: number,
  ) {
    super();
    this.declareParam("weight", [vocab, dim]);
  }

  /**
   * Where rows come from while the weight is not loaded: the rows of the given ids as [n, dim]
   * (a 150k-token table is never loaded whole to embed a calibration set).
   */
  rows: ((ids: Int32Array) => Tensor) | null = null;

  async forward(input: TokenIds): Promise<Tensor> {
    input.ids.forEach((id, i) => {
      if (id < 0 || id >= this.vocab) throw new UsageError(`token id ${id} at position ${i} is outside the vocabulary of ${this.vocab}`);
    });
    const shape = [...input.shape, this.dim];
    const loaded = this.parameter("weight").value;
    if (!loaded && this.rows) return new Tensor(this.rows(Int32Array.from(input.ids)).data, shape);
    const w = this.param("weight");
    const out = new Float32Array(input.ids.length * this.dim);
    input.ids.forEach((id, i) => {
      out.set(w.data.subarray(id * this.dim, (id + 1) * this.dim), i * this.dim);
    });
    return new Tensor(out, shape);
  }
}

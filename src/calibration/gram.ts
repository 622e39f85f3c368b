import type { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { giveBuffer, takeFloats } from "../engine/scratch.js";

/** x^T x summed over rows, in float32, with the row count: one Linear's (or a group's) input statistics. */
export class GramAccumulator {
  readonly G: Float32Array;
  rows = 0;
  constructor(readonly inFeatures: number) {
    this.G = new Float32Array(inFeatures * inFeatures);
  }

  addGram(g: Float32Array, rows: number): void {
    const G = this.G;
    for (let i = 0; i < G.length; i++) G[i] = (G[i] as number) + (g[i] as number);
    this.rows += rows;
  }

  /** Add the rows of x [n, in] (the Gram product through the engine, into a reused buffer). */
  async add(x: Tensor): Promise<void> {
    const rows = x.size / this.inFeatures;
    if (rows === 0) return;
    const buf = takeFloats(this.inFeatures * this.inFeatures);
    try {
      this.addGram((await getEngine().gram(x.reshape([rows, this.inFeatures]), buf)).data, rows);
    } finally {
      giveBuffer(buf.buffer);
    }
  }
}

/**
 * The Gram product of the latest input tensor seen, for Linears that read the same tensor (q, k,
 * v and gate_proj of an attention block; gate and up of an MLP): the second and later add it
 * instead of multiplying again. Only consecutive observations share: any other input in between
 * replaces it, so a tensor is never taken for its contents at an earlier call.
 */
export class LatestInputGram {
  private last: { x: Tensor; gram: Float32Array } | null = null;
  /** this cache's own product buffers, one per width */
  private readonly buffers = new Map<number, Float32Array>();

  /** Add x's rows to `acc`. */
  async addTo(acc: GramAccumulator, x: Tensor): Promise<void> {
    const inF = acc.inFeatures;
    const rows = x.size / inF;
    if (rows === 0) return;
    if (this.last?.x !== x || this.last.gram.length !== inF * inF) {
      this.last = null;
      let buf = this.buffers.get(inF);
      if (!buf) {
        buf = new Float32Array(inF * inF);
        this.buffers.set(inF, buf);
      }
      this.last = { x, gram: (await getEngine().gram(x.reshape([rows, inF]), buf)).data };
    }
    acc.addGram(this.last.gram, rows);
  }
}

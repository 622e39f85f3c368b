import type { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";

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

  /** Add the rows of x [n, in] (the Gram product through the engine). */
  async add(x: Tensor): Promise<void> {
    const rows = x.size / this.inFeatures;
    if (rows === 0) return;
    const g = await getEngine().gram(x.reshape([rows, this.inFeatures]));
    this.addGram(g.data, rows);
  }
}

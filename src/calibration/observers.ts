import { Tensor } from "../engine/tensor.js";
import { getEngine } from "../engine/index.js";
import { AnyModule } from "../nn/module.js";
import { Linear } from "../nn/layers.js";

/** GPTQ statistics of one Linear: H = sum over its input rows x of 2 x x^T (float32), and the row count. */
export interface HessianStats {
  /** [in, in], row-major */
  H: Float32Array;
  inFeatures: number;
  rows: number;
}

export function emptyHessian(inFeatures: number): HessianStats {
  return { H: new Float32Array(inFeatures * inFeatures), inFeatures, rows: 0 };
}

/** Add the rows of x [n, in] to the statistics: H += 2 x^T x (the Gram product through the engine). */
export async function accumulateHessian(stats: HessianStats, x: Tensor): Promise<void> {
  const k = stats.inFeatures;
  const rows = x.size / k;
  if (rows === 0) return;
  const g = await getEngine().gram(x.reshape([rows, k]));
  const H = stats.H;
  for (let i = 0; i < H.length; i++) H[i] = (H[i] as number) + 2 * (g.data[i] as number);
  stats.rows += rows;
}

export interface HessianObservers {
  stats: Map<string, HessianStats>;
  /** remove every hook */
  remove(): void;
}

/**
 * Attach a pre-hook to every Linear of `root` whose dotted name passes `filter`, accumulating
 * its input statistics. Hooks stay with the Linear objects, so they keep observing while an
 * MoE block is swapped for its calibration module.
 */
export function attachHessianObservers(root: AnyModule, filter: (name: string, module: Linear) => boolean, prefix = ""): HessianObservers {
  const stats = new Map<string, HessianStats>();
  const removers: (() => void)[] = [];
  for (const [name, m] of root.namedModules(prefix)) {
    if (!(m instanceof Linear) || !filter(name, m)) continue;
    const s = emptyHessian(m.inFeatures);
    stats.set(name, s);
    removers.push(m.registerForwardPreHook(async (_mod, x) => accumulateHessian(s, x)));
  }
  return { stats, remove: () => removers.forEach((r) => r()) };
}

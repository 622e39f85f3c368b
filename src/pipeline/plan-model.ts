/**
 * The plan's time and memory model: the constants fitted on this project's machine, the short GEMM
 * measurement the times scale by, and the process's own memory. docs/performance.md ("The plan's
 * model") has the formulas and the fits.
 */
import { getEngine } from "../engine/index.js";
import { Tensor } from "../engine/tensor.js";

/**
 * Fitted on this project's 2-vCPU machine (docs/performance.md): the fraction of the engine's GEMM
 * rate each phase reaches, the fixed cost per layer and per sample and layer, and the process's
 * resident memory besides the parts counted.
 */
export const PLAN_MODEL = {
  /**
   * of the GEMM rate the plan measures (a small product, slower than a run's larger ones, so a phase
   * can reach 1); GPTQ's per worker thread, of the work gptqFlops counts. The fits: docs/performance.md
   * ("How well the plan predicts", "The plan counted GPTQ's work twice").
   */
  efficiency: { calibrate: 1.0, propagate: 0.8, gptq: 0.15 },
  secondsPerLayer: 0.15,
  /** per sample and layer: the JavaScript-side work a sample costs besides its arithmetic (calibration's: none left to fit) */
  secondsPerSample: { calibrate: 0, propagate: 0.022 },
  /** the work folder's layer files written and read back, and the output written: 3 x the output's bytes */
  ioBytesPerSecond: 200e6,
  baselineBytes: 180 * 1024 ** 2,
  /** what a process grows by once it runs, beyond its size when it plans (onnxruntime's sessions and arenas, compiled code) */
  runtimeBytes: 48 * 1024 ** 2,
  workerBytes: 45 * 1024 ** 2,
} as const;

/** GFLOP/s of the engine's Linear on a [512, 1024] x [1024, 1024] product, best of a few (about 0.2 s). */
export async function measureGemm(): Promise<number> {
  const e = getEngine();
  const x = new Tensor(new Float32Array(512 * 1024).fill(0.5), [512, 1024]);
  const w = new Tensor(new Float32Array(1024 * 1024).fill(0.25), [1024, 1024]);
  await e.linear(x, w);
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    await e.linear(x, w);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return (2 * 512 * 1024 * 1024) / best / 1e9;
}

/**
 * The memory of the process itself while it runs: its resident size now plus what it grows by
 * (PLAN_MODEL.runtimeBytes), at least PLAN_MODEL.baselineBytes. Measured rather than fixed: Node.js
 * 22 and 24 start 10-20 MB larger than 20, which a fixed baseline fitted on 20 missed.
 */
export function processBaseline(): number {
  return Math.max(PLAN_MODEL.baselineBytes, process.memoryUsage().rss + PLAN_MODEL.runtimeBytes);
}

/**
 * GPTQ's arithmetic for a Linear of `inF` inputs and `out` outputs: each block's errors against
 * the columns after it, within the block and beyond, add up to out x inF x (inF - 1) (a product
 * 2 m k n each); the plan counts out x inF^2.
 */
export function gptqFlops(out: number, inF: number): number {
  return out * inF * inF;
}

/** Preparing a Hessian of `inF` columns for GPTQ: its Cholesky factor and that factor's inverse (inF^3 / 3 and inF^3 / 6 multiply-adds). */
export function gptqPrepFlops(inF: number): number {
  return inF ** 3;
}

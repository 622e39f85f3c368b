/**
 * GEMM throughput: the onnxruntime engine against the plain TypeScript reference, same run.
 * `npm run bench:gemm`. Prints GFLOP/s per shape and the ratio.
 */
import { OrtEngine, ReferenceEngine, type Engine, Tensor } from "../src/engine/index.js";
import { engineThreads } from "../src/engine/ort.js";

function rand(shape: number[]): Tensor {
  const t = Tensor.zeros(shape);
  for (let i = 0; i < t.size; i++) t.data[i] = Math.random() - 0.5;
  return t;
}

/**
 * GFLOP/s of engine.matmul on [m,k] x [k,n] over at least `minSeconds`: the mean, and the best
 * window of at least `windowSeconds` (the way bench/peak.c measures the peak, so the two compare).
 */
export async function gemmGflops(
  engine: Engine,
  m: number,
  k: number,
  n: number,
  minSeconds: number,
  windowSeconds = 0.04,
): Promise<{ mean: number; best: number }> {
  const a = rand([m, k]);
  const b = rand([k, n]);
  await engine.matmul(a, b); // warm-up (session creation)
  const flops = 2 * m * k * n;
  let iters = 0;
  let best = 0;
  const t0 = performance.now();
  let w0 = t0;
  let wIters = 0;
  let now = t0;
  do {
    await engine.matmul(a, b);
    iters++;
    wIters++;
    now = performance.now();
    if (now - w0 >= windowSeconds * 1000) {
      best = Math.max(best, (flops * wIters) / ((now - w0) / 1000) / 1e9);
      w0 = now;
      wIters = 0;
    }
  } while (now - t0 < minSeconds * 1000);
  const mean = (flops * iters) / ((now - t0) / 1000) / 1e9;
  return { mean, best: Math.max(best, mean) };
}

export const GEMM_SHAPES: [number, number, number][] = [
  [2048, 1024, 512],
  [512, 2048, 768],
  [64, 1024, 512],
];

async function main(): Promise<void> {
  const ort = new OrtEngine();
  const ref = new ReferenceEngine();
  console.log(`threads: ${engineThreads()}`);
  console.log("| M x K x N | onnxruntime GFLOP/s | TypeScript GFLOP/s | ratio |");
  console.log("|---|---:|---:|---:|");
  for (const [m, k, n] of GEMM_SHAPES) {
    const fast = (await gemmGflops(ort, m, k, n, 2)).mean;
    // the reference is ~100x slower: time a smaller M with the same K, N
    const slow = (await gemmGflops(ref, Math.min(m, 16), k, n, 1)).mean;
    console.log(`| ${m} x ${k} x ${n} | ${fast.toFixed(1)} | ${slow.toFixed(2)} | ${(fast / slow).toFixed(0)}x |`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();

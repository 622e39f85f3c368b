/**
 * GEMM throughput: the onnxruntime engine against the plain TypeScript reference, same run.
 * `npm run bench:gemm`. Prints GFLOP/s per shape and the ratio.
 */
import { OrtEngine, ReferenceEngine, Engine, Tensor } from "../src/engine/index.js";
import { engineThreads } from "../src/engine/ort.js";

function rand(shape: number[]): Tensor {
  const t = Tensor.zeros(shape);
  for (let i = 0; i < t.size; i++) t.data[i] = Math.random() - 0.5;
  return t;
}

/** GFLOP/s of engine.matmul on [m,k] x [k,n], running for at least `minSeconds`. */
export async function gemmGflops(engine: Engine, m: number, k: number, n: number, minSeconds: number): Promise<number> {
  const a = rand([m, k]);
  const b = rand([k, n]);
  await engine.matmul(a, b); // warm-up (session creation)
  let iters = 0;
  const t0 = performance.now();
  let elapsed = 0;
  do {
    await engine.matmul(a, b);
    iters++;
    elapsed = (performance.now() - t0) / 1000;
  } while (elapsed < minSeconds);
  return (2 * m * k * n * iters) / elapsed / 1e9;
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
    const fast = await gemmGflops(ort, m, k, n, 2);
    // the reference is ~100x slower: time a smaller M with the same K, N
    const slow = await gemmGflops(ref, Math.min(m, 16), k, n, 1);
    console.log(`| ${m} x ${k} x ${n} | ${fast.toFixed(1)} | ${slow.toFixed(2)} | ${(fast / slow).toFixed(0)}x |`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();

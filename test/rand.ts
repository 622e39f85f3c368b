import { Tensor, numel } from "../src/engine/tensor.js";

/** Deterministic pseudo-random numbers (mulberry32) for tests and benchmarks. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(shape: number[], seed: number, std = 1): Tensor {
  const r = rng(seed);
  const out = new Float32Array(numel(shape));
  for (let i = 0; i < out.length; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return new Tensor(out, shape);
}

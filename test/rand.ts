import { Tensor, numel } from "../src/engine/tensor.js";
import { fillNormal, rng } from "../src/util/random.js";

export function randn(shape: number[], seed: number, std = 1): Tensor {
  return new Tensor(fillNormal(new Float32Array(numel(shape)), rng(seed), std), shape);
}

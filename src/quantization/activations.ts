import { Tensor } from "../engine/tensor.js";
import { FP8_E4M3_MAX, f32ToFp8e4m3, fp4e2m1ToF32, fp8e4m3ToF32 } from "../engine/dtype.js";
import type { AnyModule } from "../nn/module.js";
import { Linear } from "../nn/layers.js";
import { type QuantArgs, isNvfp4 } from "./scheme.js";
import { F32_EPS, intRange, nvfp4GroupScale, quantizeFp4, quantizeInt } from "./params.js";

/**
 * Simulate input-activation quantization as a serving engine applies it: per token (dynamic,
 * one scale per row from its absmax), per group of a token's columns (dynamic, FP8_BLOCK's 128),
 * per tensor (the calibrated static `input_scale`), or NVFP4's FP4 groups of 16 with dynamic FP8
 * group scales under the calibrated static `input_global_scale`.
 */
function fakeQuantizeActivations(x: Tensor, args: QuantArgs, staticScale: number | null): Tensor {
  if (isNvfp4(args)) return nvfp4Activations(x, args.groupSize ?? 16, staticScale ?? 1);
  const n = x.dim(-1);
  const group = args.strategy === "group" ? (args.groupSize ?? n) : n;
  const out = new Float32Array(x.size);
  const denom = args.type === "float" ? FP8_E4M3_MAX : (intRange(args.numBits).qmax - intRange(args.numBits).qmin) / 2;
  const { qmin, qmax } = intRange(args.numBits);
  for (let r = 0; r < x.size / n; r++) {
    for (let c0 = 0; c0 < n; c0 += group) {
      const c1 = Math.min(n, c0 + group);
      let s = staticScale ?? 0;
      if (staticScale === null) {
        let amax = 0;
        for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x.data[r * n + c] as number));
        s = Math.fround(amax / denom) || F32_EPS;
      }
      for (let c = c0; c < c1; c++) {
        const v = Math.fround((x.data[r * n + c] as number) / s);
        const q =
          args.type === "float"
            ? fp8e4m3ToF32(f32ToFp8e4m3(Math.max(-FP8_E4M3_MAX, Math.min(FP8_E4M3_MAX, v))))
            : quantizeInt(x.data[r * n + c] as number, s, 0, qmin, qmax);
        out[r * n + c] = Math.fround(q * s);
      }
    }
  }
  return new Tensor(out, x.shape);
}

/** NVFP4 activations: per group, FP8(global * absmax / 6) (0.125 for zero), codes FP4 of x / (that / global). */
function nvfp4Activations(x: Tensor, group: number, global: number): Tensor {
  const out = new Float32Array(x.size);
  for (let g0 = 0; g0 < x.size; g0 += group) {
    let amax = 0;
    for (let i = g0; i < g0 + group; i++) amax = Math.max(amax, Math.abs(x.data[i] as number));
    const s = nvfp4GroupScale(amax, global, "F32").scale;
    for (let i = g0; i < g0 + group; i++) out[i] = Math.fround(fp4e2m1ToF32(quantizeFp4(x.data[i] as number, s)) * s);
  }
  return new Tensor(out, x.shape);
}

/** Attach activation fake-quantization pre-hooks; returns the remover. */
export function attachActivationQuantization(
  root: AnyModule,
  argsFor: (name: string) => QuantArgs | null,
  staticScale: (name: string) => number | null,
): () => void {
  const removers: (() => void)[] = [];
  for (const [name, m] of root.namedModules()) {
    if (!(m instanceof Linear)) continue;
    const args = argsFor(name);
    if (!args) continue;
    const s = args.dynamic === true ? null : staticScale(name);
    removers.push(m.registerForwardPreHook((_m, x) => fakeQuantizeActivations(x, args, s)));
  }
  return () => {
    for (const r of removers) r();
  };
}

import { Tensor } from "../engine/tensor.js";
import { FP8_E4M3_MAX, f32ToFp8e4m3, fp8e4m3ToF32 } from "../engine/dtype.js";
import type { AnyModule } from "../nn/module.js";
import { Linear } from "../nn/layers.js";
import type { QuantArgs } from "./scheme.js";
import { F32_EPS, intRange, quantizeInt } from "./params.js";

/**
 * Simulate input-activation quantization as a serving engine applies it: per token (dynamic,
 * one scale per row from its absmax) or per tensor (the calibrated static `input_scale`).
 */
function fakeQuantizeActivations(x: Tensor, args: QuantArgs, staticScale: number | null): Tensor {
  const n = x.dim(-1);
  const out = new Float32Array(x.size);
  const denom = args.type === "float" ? FP8_E4M3_MAX : (intRange(args.numBits).qmax - intRange(args.numBits).qmin) / 2;
  const { qmin, qmax } = intRange(args.numBits);
  for (let r = 0; r < x.size / n; r++) {
    let s = staticScale ?? 0;
    if (staticScale === null) {
      let amax = 0;
      for (let c = 0; c < n; c++) amax = Math.max(amax, Math.abs(x.data[r * n + c] as number));
      s = Math.fround(amax / denom) || F32_EPS;
    }
    for (let c = 0; c < n; c++) {
      const v = Math.fround((x.data[r * n + c] as number) / s);
      const q =
        args.type === "float"
          ? fp8e4m3ToF32(f32ToFp8e4m3(Math.max(-FP8_E4M3_MAX, Math.min(FP8_E4M3_MAX, v))))
          : quantizeInt(x.data[r * n + c] as number, s, 0, qmin, qmax);
      out[r * n + c] = Math.fround(q * s);
    }
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
    const s = args.dynamic ? null : staticScale(name);
    removers.push(m.registerForwardPreHook((_m, x) => fakeQuantizeActivations(x, args, s)));
  }
  return () => {
    for (const r of removers) r();
  };
}

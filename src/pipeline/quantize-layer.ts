import { Tensor } from "../engine/tensor.js";
import { NumericalError } from "../errors.js";
import { HessianStats } from "../calibration/observers.js";
import { Linear } from "../nn/layers.js";
import { GptqPrep, gptqWithPrep, prepareGptq, rtnQuantize } from "../quantization/gptq.js";
import { QuantizedWeight, ScaleDType, dequantize } from "../quantization/params.js";
import { Scheme } from "../quantization/scheme.js";
import { FP8_E4M3_MAX } from "../engine/dtype.js";
import { roundScale } from "../quantization/params.js";

export type Method = "gptq" | "rtn";

export interface Fallback {
  module: string;
  reason: "no-calibration-rows" | "cholesky-failed" | "no-activation-rows";
  /** what was done instead */
  action: string;
}

export interface QuantizedLinear {
  name: string;
  weight: QuantizedWeight;
  /** static input scale (FP8 static), else null */
  inputScale: number | null;
  /** GPTQ loss estimate (0 for RTN) */
  loss: number;
  rows: number;
}

export interface LayerTargets {
  /** dotted name -> Linear */
  linears: Map<string, Linear>;
  hessians: Map<string, HessianStats>;
  /** dotted name -> max |x| over calibration rows (static activation schemes) */
  inputAbsMax: Map<string, { absmax: number; rows: number }>;
}

/**
 * Quantize every target Linear of a layer and replace its weight by the dequantized values
 * (so the next layer's inputs carry this layer's quantization error). A Linear that saw no
 * calibration rows falls back to round-to-nearest (GPTQ) or to its siblings' largest input
 * scale (static activations); every fallback is returned, and warned once per layer.
 */
export async function quantizeLayerLinears(
  t: LayerTargets,
  scheme: Scheme,
  method: Method,
  scaleDType: ScaleDType,
  opts: { dampening: number; blockSize: number; warn: (msg: string) => void; layerLabel: string },
): Promise<{ results: QuantizedLinear[]; fallbacks: Fallback[] }> {
  const results: QuantizedLinear[] = [];
  const fallbacks: Fallback[] = [];
  const staticInput = scheme.inputActivations && !scheme.inputActivations.dynamic;
  // Linears whose Hessian is the same array (the all-experts fast path's shared gate/up
  // statistics) share one damped Cholesky
  const preps = new Map<Float32Array, GptqPrep | NumericalError>();
  const siblingMax = Math.max(0, ...[...t.inputAbsMax.values()].filter((v) => v.rows > 0).map((v) => v.absmax));
  for (const [name, lin] of t.linears) {
    const W = lin.weight;
    const [out, inF] = [lin.outFeatures, lin.inFeatures];
    let weight: QuantizedWeight;
    let loss = 0;
    const stats = t.hessians.get(name);
    const rows = stats?.rows ?? t.inputAbsMax.get(name)?.rows ?? 0;
    if (stats) assertFiniteStats(stats.H, `${opts.layerLabel}: ${name}: calibration Hessian`);
    if (method === "gptq" && stats && stats.rows > 0) {
      try {
        const H = stats.H;
        let prep = preps.get(H);
        if (!prep) {
          try {
            prep = prepareGptq(H, inF, scheme.weights.actorder, name, opts.dampening);
          } catch (e) {
            if (!(e instanceof NumericalError)) throw e;
            prep = e;
          }
          preps.set(H, prep);
        }
        if (prep instanceof NumericalError) throw prep;
        const r = await gptqWithPrep(W.data, out, prep, scheme.weights, scaleDType, name, opts.blockSize);
        weight = r.weight;
        loss = r.loss;
      } catch (e) {
        if (!(e instanceof NumericalError)) throw e;
        fallbacks.push({ module: name, reason: "cholesky-failed", action: "round-to-nearest" });
        weight = rtnQuantize(W.data, out, inF, scheme.weights, scaleDType, name);
      }
    } else {
      if (method === "gptq") fallbacks.push({ module: name, reason: "no-calibration-rows", action: "round-to-nearest" });
      weight = rtnQuantize(W.data, out, inF, scheme.weights, scaleDType, name);
    }
    let inputScale: number | null = null;
    if (staticInput) {
      const a = t.inputAbsMax.get(name);
      let absmax = a && a.rows > 0 ? a.absmax : siblingMax;
      if (!a || a.rows === 0) fallbacks.push({ module: name, reason: "no-activation-rows", action: "largest input scale of the layer's other Linears" });
      if (!(absmax > 0)) absmax = 1;
      inputScale = roundScale(Math.fround(absmax / FP8_E4M3_MAX), scaleDType);
    }
    assertValidQParams(weight, `${opts.layerLabel}: ${name}`);
    lin.parameter("weight").value = new Tensor(dequantize(weight), [out, inF]);
    results.push({ name, weight, inputScale, loss, rows });
  }
  if (fallbacks.length > 0) {
    const names = fallbacks.map((f) => f.module);
    opts.warn(`${opts.layerLabel}: ${fallbacks.length} Linear layer(s) saw no calibration rows or failed GPTQ and fell back: ${names.slice(0, 6).join(", ")}${names.length > 6 ? ", ..." : ""}`);
  }
  return { results, fallbacks };
}

function assertFiniteStats(values: Float32Array, where: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i] as number)) throw new NumericalError(`${where} has a non-finite value ${values[i]} at flat index ${i}; refusing to quantize`);
  }
}

/** Scales finite and positive, zero points in range: checked before anything is written. */
export function assertValidQParams(q: QuantizedWeight, where: string): void {
  const { scale, zeroPoint } = q.params;
  for (let i = 0; i < scale.length; i++) {
    const s = scale[i] as number;
    if (!Number.isFinite(s) || s <= 0) throw new NumericalError(`${where}: invalid weight scale ${s} at index ${i}`);
  }
  if (zeroPoint) {
    const lim = 2 ** (q.args.numBits - 1);
    for (let i = 0; i < zeroPoint.length; i++) {
      const z = zeroPoint[i] as number;
      if (!(z >= -lim && z < lim)) throw new NumericalError(`${where}: zero point ${z} at index ${i} outside the ${q.args.numBits}-bit range`);
    }
  }
}

/** Bytes a run reads and writes, from the safetensors headers and the scheme alone: per layer, and for the tensors copied whole. */
import type { Checkpoint } from "../io/checkpoint.js";
import { DTYPE_BYTES } from "../io/safetensors.js";
import type { CausalLM } from "../models/family.js";
import { Linear } from "../nn/layers.js";
import type { AnyModule } from "../nn/module.js";
import type { ScaleDType } from "../quantization/params.js";
import type { Scheme } from "../quantization/scheme.js";
import { quantizedSpecs } from "../export/layout.js";

export const bytesOf = (dtype: keyof typeof DTYPE_BYTES, shape: readonly number[]): number =>
  DTYPE_BYTES[dtype] * shape.reduce((a, b) => a * b, 1);

/**
 * A layer's bytes: read (its tensors as stored), written (a target Linear's quantized tensors in
 * place of its weight, the rest as stored) and its parameters in float32.
 */
export function layerBytes(
  layer: AnyModule,
  prefix: string,
  ck: Checkpoint,
  schemeOf: (linear: string) => Scheme | null,
  scaleDtype: ScaleDType,
): { read: number; write: number; params: number } {
  const linears = new Map(layer.namedModules(prefix).filter(([, m]) => m instanceof Linear) as [string, Linear][]);
  let read = 0;
  let write = 0;
  let params = 0;
  for (const [n, p] of layer.namedParameters(prefix)) {
    const info = ck.has(n) ? ck.info(n) : null;
    read += info ? bytesOf(info.dtype, info.shape) : 0;
    params += 4 * p.shape.reduce((a, b) => a * b, 1);
    const lin = n.endsWith(".weight") ? n.slice(0, -".weight".length) : null;
    const l = lin !== null ? linears.get(lin) : undefined;
    const scheme = l && lin !== null ? schemeOf(lin) : null;
    if (l && scheme) {
      const group = { targets: ["Linear"], weights: scheme.weights, inputActivations: scheme.inputActivations, format: scheme.format };
      for (const spec of quantizedSpecs(group, l.outFeatures, l.inFeatures).values())
        write += bytesOf(spec.dtypes.includes(scaleDtype) ? scaleDtype : (spec.dtypes[0] as keyof typeof DTYPE_BYTES), spec.shape);
    } else write += info ? bytesOf(info.dtype, info.shape) : 0;
  }
  return { read, write, params };
}

/** The tensors outside the layers (embeddings, final norm, lm_head, those the model does not use), copied unchanged: their bytes each. */
export function copiedBytes(model: CausalLM, ck: Checkpoint): number[] {
  const layerNames = new Set(model.namedParameters().map(([n]) => n));
  return ck
    .names()
    .filter((n) => !(/^model\.layers\.\d+\./.test(n) && layerNames.has(n)))
    .map((n) => bytesOf(ck.info(n).dtype, ck.info(n).shape));
}

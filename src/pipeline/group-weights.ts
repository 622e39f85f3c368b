/**
 * A finished expert group's quantized weights, read back from the tensors it wrote: dequantized as
 * compressed-tensors' reader does (`compressedTensorsSource`), which gives GPTQ's and round-to-
 * nearest's own dequantized weights bit for bit. A group's tensors file is all a later step needs
 * of it (adding its routed outputs to the layer's sums) when another process quantized it.
 */
import type { TensorSource } from "../io/tensor-source.js";
import { compressedTensorsSource, parseQuantizationConfig } from "../io/compressed-tensors.js";
import type { SafetensorsFile } from "../io/safetensors.js";
import type { Linear } from "../nn/layers.js";
import { type Scheme, quantizationConfig } from "../quantization/scheme.js";

/** Set each quantized Linear's weight (by name) to its dequantized values from `file`, which holds the tensors `tensorsOf` names. */
export function loadQuantizedWeights(
  file: SafetensorsFile,
  linears: ReadonlyMap<string, Linear>,
  schemeOf: (linear: string) => Scheme,
  tensorsOf: (linear: string) => readonly string[],
): void {
  const sources = new Map<Scheme, (names: readonly string[]) => TensorSource>();
  for (const [name, lin] of linears) {
    const scheme = schemeOf(name);
    let make = sources.get(scheme);
    if (!make) {
      const cfg = parseQuantizationConfig(quantizationConfig(scheme, [], scheme.weights.actorder), file.file);
      make = (names) =>
        compressedTensorsSource(
          { dir: file.file, names: () => [...names], info: (n) => file.info(n), readRaw: (n) => file.readRaw(n) },
          cfg,
        );
      sources.set(scheme, make);
    }
    lin.parameter("weight").value = make(tensorsOf(name)).readF32(`${name}.weight`).reshape([lin.outFeatures, lin.inFeatures]);
  }
}

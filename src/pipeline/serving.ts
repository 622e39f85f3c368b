/**
 * A checkpoint opened as a serving engine would run it: for a compressed-tensors checkpoint,
 * every tensor first checked against its `quantization_config` (a mismatch is refused), weights
 * dequantized, and input activations quantized on the fly where the scheme says so.
 */
import { CheckpointFormatError } from "../errors.js";
import { groupFor } from "../io/compressed-tensors.js";
import { expectedTensors, layoutProblems } from "../export/layout.js";
import { type LoadedModel, openModel } from "../models/registry.js";
import { loadParameters } from "../nn/weights.js";
import { attachActivationQuantization } from "../quantization/activations.js";

export function openServed(dir: string, opts: { load?: boolean } = {}): LoadedModel {
  const m = openModel(dir, { load: false });
  const q = m.quantization;
  if (q) {
    const problems = layoutProblems(m.checkpoint, q, expectedTensors(m.model, m.config));
    if (problems.length) {
      throw new CheckpointFormatError(
        `${dir}: ${problems.length} tensor(s) do not match config.json's quantization_config (moecal inspect lists them all): ${problems.slice(0, 3).join("; ")}`,
      );
    }
    attachActivationQuantization(m.model, (n) => groupFor(q, n)?.inputActivations ?? null, m.inputScale);
  }
  if (opts.load ?? true) loadParameters(m.model, m.source, m.mapping);
  return m;
}

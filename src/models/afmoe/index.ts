import { Checkpoint } from "../../io/checkpoint.js";
import { CheckpointFormatError } from "../../errors.js";
import { expectedTensors, layoutProblems } from "../../export/layout.js";
import { compressedTensorsSource, groupFor, parseQuantizationConfig } from "../../export/compressed-tensors.js";
import { attachActivationQuantization } from "../../quantization/activations.js";
import { type AfmoeConfig, readAfmoeConfig } from "./config.js";
import { AfmoeForCausalLM } from "./modeling.js";
import {
  type TensorSource,
  assertMappingComplete,
  checkpointSource,
  loadParameters,
  mapAfmoeWeights,
  type WeightMapping,
} from "./weights.js";

export * from "./config.js";
export * from "./modeling.js";
export * from "./weights.js";
export * from "./quant-defaults.js";

export interface LoadedAfmoe {
  config: AfmoeConfig;
  model: AfmoeForCausalLM;
  source: TensorSource;
  mapping: WeightMapping;
}

/** Build the model for a checkpoint folder and check every weight is there; `load` reads them all now. */
export function openAfmoe(dir: string, opts: { load?: boolean; source?: TensorSource } = {}): LoadedAfmoe {
  const config = readAfmoeConfig(dir);
  const qc = config.raw.quantization_config;
  const ck = opts.source ? null : Checkpoint.open(dir);
  const parsed = qc && ck ? parseQuantizationConfig(qc, `${dir}/config.json`) : null;
  const ctSource = parsed && ck ? compressedTensorsSource(ck, parsed) : null;
  const source = opts.source ?? ctSource ?? checkpointSource(ck as Checkpoint);
  const model = new AfmoeForCausalLM(config);
  ck?.assertNoAnomalies();
  if (parsed && ck) {
    const problems = layoutProblems(ck, parsed, expectedTensors(model, config.tieWordEmbeddings));
    if (problems.length)
      throw new CheckpointFormatError(
        `${dir}: ${problems.length} tensor(s) do not match config.json's quantization_config (moecal inspect lists them all): ${problems.slice(0, 3).join("; ")}`,
      );
  }
  if (parsed && ctSource) {
    // serve as vLLM would: quantized input activations where the scheme says so
    attachActivationQuantization(
      model,
      (n) => groupFor(parsed, n)?.inputActivations ?? null,
      (n) => ctSource.inputScale(n),
    );
  }
  const expected = model.namedParameters().map(([n, p]) => [n, p.shape] as const);
  const available = new Map(source.names().map((n) => [n, source.shapeOf(n)] as const));
  const mapping = mapAfmoeWeights(config, expected, available);
  assertMappingComplete(mapping, dir);
  if (opts.load ?? true) loadParameters(model, source, mapping);
  return { config, model, source, mapping };
}

import { Checkpoint } from "../../io/checkpoint.js";
import { AfmoeConfig, readAfmoeConfig } from "./config.js";
import { AfmoeForCausalLM } from "./modeling.js";
import { TensorSource, assertMappingComplete, checkpointSource, loadParameters, mapAfmoeWeights, WeightMapping } from "./weights.js";

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
  const source = opts.source ?? checkpointSource(Checkpoint.open(dir));
  const model = new AfmoeForCausalLM(config);
  const expected = model.namedParameters().map(([n, p]) => [n, p.shape] as const);
  const available = new Map(source.names().map((n) => [n, source.shapeOf(n)] as const));
  const mapping = mapAfmoeWeights(config, expected, available);
  assertMappingComplete(mapping, dir);
  if (opts.load ?? true) loadParameters(model, source, mapping);
  return { config, model, source, mapping };
}

/**
 * The model families moecal knows, by config.json's `model_type`, and opening a checkpoint folder
 * with its family: config, module tree, weight mapping, and (optionally) every weight loaded.
 */
import { ConfigError } from "../errors.js";
import type { Checkpoint } from "../io/checkpoint.js";
import { type ParsedQuantConfig, compressedTensorsSource } from "../io/compressed-tensors.js";
import { openCheckpoint, sourceQuantization } from "../io/source-format.js";
import { inStoredOnlyLayer, storedName } from "./stored-layers.js";
import { readConfigJson } from "../io/json.js";
import { type TensorSource, checkpointSource } from "../io/tensor-source.js";
import { type WeightMapping, assertMappingComplete, loadParameters } from "../nn/weights.js";
import { AFMOE_FAMILY } from "./afmoe/family.js";
import { genericFamily } from "./generic/family.js";
import { DEEPSEEK_V3_FAMILY, KIMI_K2_FAMILY } from "./deepseek_v3/family.js";
import { GLM4_MOE_FAMILY } from "./glm4_moe/family.js";
import { MINIMAX_M2_FAMILY } from "./minimax_m2/family.js";
import { MIXTRAL_FAMILY } from "./mixtral/family.js";
import { QWEN3_MOE_FAMILY } from "./qwen3_moe/family.js";
import { QWEN3_5_MOE_FAMILY, QWEN3_NEXT_FAMILY } from "./qwen3_next/family.js";
import type { CausalLM, ModelConfig, ModelFamily } from "./family.js";

export const FAMILIES: readonly ModelFamily[] = [
  AFMOE_FAMILY,
  QWEN3_MOE_FAMILY,
  MIXTRAL_FAMILY,
  GLM4_MOE_FAMILY,
  DEEPSEEK_V3_FAMILY,
  KIMI_K2_FAMILY,
  MINIMAX_M2_FAMILY,
  QWEN3_NEXT_FAMILY,
  QWEN3_5_MOE_FAMILY,
];

/** The family of a parsed config.json; an unknown `model_type` names the supported ones. */
export function familyFor(json: unknown, where: string): ModelFamily {
  const mt = typeof json === "object" && json !== null ? (json as { model_type?: unknown }).model_type : undefined;
  const family = FAMILIES.find((f) => f.modelType === mt);
  if (!family)
    throw new ConfigError(
      `${where}: unsupported model_type ${JSON.stringify(mt ?? null)} (moecal supports ${FAMILIES.map((f) => `"${f.modelType}"`).join(", ")}; any other checkpoint is quantized data-free: --method rtn with a scheme without static activation scales)`,
    );
  return family;
}

/** The family named by a `model_type`, for a user who names one (`random-model --family`). */
export function familyByType(modelType: string): ModelFamily {
  return familyFor({ model_type: modelType }, "--family");
}

/**
 * `<dir>/config.json` read, its family found and the config validated by it. With `generic`, a
 * `model_type` moecal has no family for is read from its tensors' names and shapes (generic/family.ts:
 * for the data-free path, which runs nothing), and `generic` is called with the rules used.
 */
export function readModelConfig(
  dir: string,
  opts: { generic?: (rules: string) => void } = {},
): { family: ModelFamily; config: ModelConfig } {
  const { file, json } = readConfigJson(dir);
  const mt = typeof json === "object" && json !== null ? (json as { model_type?: unknown }).model_type : undefined;
  if (opts.generic && typeof mt === "string" && !FAMILIES.some((f) => f.modelType === mt)) {
    const family = genericFamily(openCheckpoint(dir, sourceQuantization(json as Record<string, unknown>, file), { decodeQuantized: true }));
    opts.generic(
      `${file}: model_type "${mt}" is not a family moecal knows; quantizing data-free from tensor names and shapes alone: the Linear layers are the 2-D .weight tensors of model.layers.*, never quantized: ${family.defaultIgnore.join(", ")}; vLLM's fused groups by the usual names (q/k/v, gate/up, w1/w3, q_a/kv_a, a layer's experts)`,
    );
    return { family, config: family.parseConfig(json, file) };
  }
  const family = familyFor(json, file);
  return { family, config: family.parseConfig(json, file) };
}

export interface LoadedModel {
  family: ModelFamily;
  config: ModelConfig;
  model: CausalLM;
  /** the folder's tensors (a compressed-tensors checkpoint's quantized weights dequantized) */
  source: TensorSource;
  mapping: WeightMapping;
  checkpoint: Checkpoint;
  /** config.json's compressed-tensors quantization_config, parsed (null for a plain or FP8 block-scaled source) */
  quantization: ParsedQuantConfig | null;
  /** a quantized Linear's static input scale, if it has one */
  inputScale(linear: string): number | null;
}

/** Build the model for a checkpoint folder and check every weight is there; `load` reads them all now (default true). */
export function openModel(dir: string, opts: { load?: boolean } = {}): LoadedModel {
  const { family, config } = readModelConfig(dir);
  const stored = sourceQuantization(config.raw, `${dir}/config.json`);
  const checkpoint = openCheckpoint(dir, stored, { modelPrefix: config.storedModelPrefix, keep: (n) => inStoredOnlyLayer(n, config) });
  // the config's exact names are the stored ones; the model reads them under its own
  const quantization = stored.kind === "compressed-tensors" ? { ...stored.config, storedName: (n: string) => storedName(n, config) } : null;
  const ct = quantization ? compressedTensorsSource(checkpoint, quantization) : null;
  const source = ct ?? checkpointSource(checkpoint);
  const model = family.build(config);
  const expected = model.namedParameters().map(([n, p]) => [n, p.shape] as const);
  const mapping = family.mapWeights(config, expected, new Map(source.names().map((n) => [n, source.shapeOf(n)] as const)));
  assertMappingComplete(mapping, dir);
  if (opts.load ?? true) loadParameters(model, source, mapping);
  return { family, config, model, source, mapping, checkpoint, quantization, inputScale: (n) => ct?.inputScale(n) ?? null };
}

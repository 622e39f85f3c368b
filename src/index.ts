/** moecal: calibrate every expert of an MoE model, quantize, export compressed-tensors. */
export * from "./errors.js";
export * from "./engine/index.js";
export { SafetensorsFile, LIMITS, rawToF32, rawToInts } from "./io/safetensors.js";
export type { DType, RawTensor, TensorInfo } from "./io/safetensors.js";
export { Checkpoint } from "./io/checkpoint.js";
export { ShardedWriter, writeSafetensors } from "./io/writer.js";
export { loadTokenizer } from "./io/tokenizer.js";
export { modelFiles, COMPANION_FILES, MODEL_FILE_LIMITS } from "./io/model-files.js";
export { MAX_JSON_DEPTH } from "./io/json.js";
export type { LoadedTokenizer } from "./io/tokenizer.js";
export { Module, ModuleList } from "./nn/module.js";
export type { AnyModule, ForwardHook, ForwardPreHook, Parameter } from "./nn/module.js";
export { Linear, RMSNorm, Embedding } from "./nn/layers.js";
export * from "./models/afmoe/index.js";
export { withMoeCalibration } from "./calibration/context.js";
export type { MoeCalibrationContextOptions } from "./calibration/context.js";
export type { MoECalibrationModule, CalibrationModuleFactory, CalibrationOptions } from "./calibration/module.js";
export { CalibrationAfmoeMoE } from "./calibration/afmoe.js";
export { MOE_CALIBRATION_REGISTRY, standardizeClassName, calibrationFactoryFor } from "./calibration/registry.js";
export { attachHessianObservers, HessianStats } from "./calibration/observers.js";
export { GramAccumulator } from "./calibration/gram.js";
export {
  DEFAULT_STATISTICS,
  SEED_STATISTICS,
  formatExpertStatistics,
  parseExpertStatistics,
  parseRoutedWeight,
} from "./calibration/expert-statistics.js";
export type { ExpertStatistics, ExpertStatisticsOptions, RoutedWeight } from "./calibration/expert-statistics.js";
export { trackCoverage } from "./calibration/coverage.js";
export type { Coverage, LayerCoverage } from "./calibration/coverage.js";
export * from "./quantization/scheme.js";
export { parseRecipe, recipeName } from "./quantization/recipe.js";
export type { Method, Recipe, RecipeEntry } from "./quantization/recipe.js";
export { readRecipeFile } from "./quantization/recipe-file.js";
export { gptqQuantize, rtnQuantize } from "./quantization/gptq.js";
export { computeQParams, dequantize } from "./quantization/params.js";
export type { QuantizedWeight, QParams, ScaleDType } from "./quantization/params.js";
export { packRows, unpackRows, packColumns, unpackColumns } from "./quantization/pack.js";
export { quantizedLinearTensors } from "./export/compressed-tensors.js";
export { compressedTensorsSource, parseQuantizationConfig, groupFor } from "./io/compressed-tensors.js";
export type { ParsedQuantConfig, QuantConfigGroup } from "./io/compressed-tensors.js";
export { checkpointSource } from "./io/tensor-source.js";
export type { TensorSource } from "./io/tensor-source.js";
export { loadParameters, unloadParameters, assertMappingComplete } from "./nn/weights.js";
export type { WeightMapping } from "./nn/weights.js";
export { FAMILIES, familyFor, readModelConfig, openModel } from "./models/registry.js";
export type { LoadedModel } from "./models/registry.js";
export type { CausalLM, ModelConfig, ModelFamily, DecoderLayer } from "./models/family.js";
export { fusedSchemeConflicts } from "./models/fused.js";
export type { FusedGroup } from "./models/fused.js";
export { openServed } from "./pipeline/serving.js";
export { OutputFolder, assertSafeOutput, OUTPUT_MARKER } from "./export/output.js";
export { layoutProblems, expectedTensors } from "./export/layout.js";
export { oneshot } from "./pipeline/oneshot.js";
export type { OneshotOptions, OneshotResult, ProgressEvent } from "./pipeline/oneshot.js";
export type { OneshotReport, LayerReport } from "./pipeline/report.js";
export { evaluate } from "./pipeline/eval.js";
export { runWorker } from "./distributed/worker.js";
export type { WorkerOptions, WorkerEvent } from "./distributed/worker.js";
export type { NatsOptions } from "./distributed/nats.js";
export { distributedPlan, formatDistributed } from "./pipeline/plan-distributed.js";
export type { DistributedPlan, DistributedLayer } from "./pipeline/plan-distributed.js";
export type { EvalOptions, EvalResult } from "./pipeline/eval.js";
export { measureCoverage } from "./pipeline/coverage.js";
export { streamedHidden, chunksByTokens, STREAM_CHUNK_TOKENS } from "./pipeline/stream.js";
export { inspectCheckpoint } from "./export/inspect.js";
export { numpyPermutation, hfShuffled } from "./util/numpy-random.js";
export { forwardFile } from "./pipeline/forward.js";
export { randomModel } from "./pipeline/random-model.js";
export { loadTokenizedSamples, readRawSamples, MAX_DATASET_BYTES, CHAT_TEMPLATE_LIMITS } from "./pipeline/dataset.js";
export type { ChatMessage, RawSample, SampleOptions } from "./pipeline/dataset.js";
export { BUNDLED_MODEL, BUNDLED_DATASET } from "./paths.js";

import type { CalibrationModuleFactory } from "./module.js";
import { buildCalibrationAfmoeMoE } from "./afmoe.js";
import { buildCalibrationDeepseekV3MoE } from "./deepseek-v3.js";
import { buildCalibrationGlm4MoeMoE } from "./glm4-moe.js";
import { buildCalibrationMiniMaxM2SparseMoeBlock } from "./minimax-m2.js";
import { buildCalibrationMixtralSparseMoeBlock } from "./mixtral.js";
import { buildCalibrationQwen3MoeSparseMoeBlock } from "./qwen3-moe.js";
import { buildCalibrationQwen3NextSparseMoeBlock } from "./qwen3-next.js";

/** Registry key of a class name: lower case, `_` and spaces to `-` (`AfmoeMoE` -> `afmoemoe`). */
export function standardizeClassName(name: string): string {
  return name.toLowerCase().replace(/[_\s]/g, "-");
}

/**
 * MoE blocks with a calibration replacement, keyed by the standardised class name of the
 * original. Adding an architecture: one file with its calibration class, one line here.
 */
export const MOE_CALIBRATION_REGISTRY: ReadonlyMap<string, CalibrationModuleFactory> = new Map([
  [standardizeClassName("AfmoeMoE"), buildCalibrationAfmoeMoE],
  [standardizeClassName("Qwen3MoeSparseMoeBlock"), buildCalibrationQwen3MoeSparseMoeBlock],
  [standardizeClassName("MixtralSparseMoeBlock"), buildCalibrationMixtralSparseMoeBlock],
  [standardizeClassName("Glm4MoeMoE"), buildCalibrationGlm4MoeMoE],
  [standardizeClassName("DeepseekV3MoE"), buildCalibrationDeepseekV3MoE],
  [standardizeClassName("MiniMaxM2SparseMoeBlock"), buildCalibrationMiniMaxM2SparseMoeBlock],
  [standardizeClassName("Qwen3NextSparseMoeBlock"), buildCalibrationQwen3NextSparseMoeBlock],
]);

export function calibrationFactoryFor(className: string): CalibrationModuleFactory | undefined {
  return MOE_CALIBRATION_REGISTRY.get(standardizeClassName(className));
}

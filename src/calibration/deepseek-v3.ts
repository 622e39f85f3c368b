import type { AnyModule } from "../nn/module.js";
import { CalibrationGlm4MoeMoE } from "./glm4-moe.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";

/** llm-compressor's CalibrationDeepseekV3MoE: DeepSeek-V3's block is GLM-4.5's, and so is its calibration module. */
export class CalibrationDeepseekV3MoE extends CalibrationGlm4MoeMoE {
  override readonly className = "CalibrationDeepseekV3MoE";
}

export function buildCalibrationDeepseekV3MoE(original: AnyModule, _config: unknown, options: CalibrationOptions): MoECalibrationModule {
  return new CalibrationDeepseekV3MoE(original, options);
}

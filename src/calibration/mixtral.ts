import { UsageError } from "../errors.js";
import { type MixtralBlockSparseTop2MLP, MixtralSparseMoeBlock } from "../models/mixtral/modeling.js";
import type { AnyModule } from "../nn/module.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { CalibrationSoftmaxMoeBlock } from "./softmax-moe.js";

/** llm-compressor's CalibrationMixtralSparseMoeBlock: replaces MixtralSparseMoeBlock while calibrating. */
export class CalibrationMixtralSparseMoeBlock extends CalibrationSoftmaxMoeBlock<MixtralBlockSparseTop2MLP> {
  constructor(original: AnyModule, options: CalibrationOptions) {
    if (!(original instanceof MixtralSparseMoeBlock))
      throw new UsageError(`CalibrationMixtralSparseMoeBlock replaces MixtralSparseMoeBlock, not ${original.className}`);
    super("CalibrationMixtralSparseMoeBlock", original, original.shape, options);
  }
}

export function buildCalibrationMixtralSparseMoeBlock(
  original: AnyModule,
  _config: unknown,
  options: CalibrationOptions,
): MoECalibrationModule {
  return new CalibrationMixtralSparseMoeBlock(original, options);
}

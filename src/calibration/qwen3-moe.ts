import { UsageError } from "../errors.js";
import { type Qwen3MoeMLP, Qwen3MoeSparseMoeBlock } from "../models/qwen3_moe/modeling.js";
import type { AnyModule } from "../nn/module.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { CalibrationSoftmaxMoeBlock } from "./softmax-moe.js";

/** llm-compressor's CalibrationQwen3MoeSparseMoeBlock: replaces Qwen3MoeSparseMoeBlock while calibrating. */
export class CalibrationQwen3MoeSparseMoeBlock extends CalibrationSoftmaxMoeBlock<Qwen3MoeMLP> {
  constructor(original: AnyModule, options: CalibrationOptions) {
    if (!(original instanceof Qwen3MoeSparseMoeBlock))
      throw new UsageError(`CalibrationQwen3MoeSparseMoeBlock replaces Qwen3MoeSparseMoeBlock, not ${original.className}`);
    super("CalibrationQwen3MoeSparseMoeBlock", original, original.shape, options);
  }
}

export function buildCalibrationQwen3MoeSparseMoeBlock(
  original: AnyModule,
  _config: unknown,
  options: CalibrationOptions,
): MoECalibrationModule {
  return new CalibrationQwen3MoeSparseMoeBlock(original, options);
}

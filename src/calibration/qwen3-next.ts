import { add } from "../engine/ops.js";
import type { Tensor } from "../engine/tensor.js";
import { UsageError } from "../errors.js";
import { type Qwen3NextMLP, Qwen3NextSparseMoeBlock, gatedSharedExpert } from "../models/qwen3_next/modeling.js";
import type { AnyModule } from "../nn/module.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { CalibrationSoftmaxMoeBlock } from "./softmax-moe.js";

/**
 * llm-compressor's Qwen3-Next / Qwen3.5-MoE calibration block: the softmax routing and every
 * expert on all tokens (or its routed tokens only) as for Qwen3-MoE, plus the sigmoid-gated shared
 * expert on every token: the block's output is unchanged.
 */
export class CalibrationQwen3NextSparseMoeBlock extends CalibrationSoftmaxMoeBlock<Qwen3NextMLP> {
  constructor(original: AnyModule, options: CalibrationOptions) {
    if (!(original instanceof Qwen3NextSparseMoeBlock))
      throw new UsageError(`CalibrationQwen3NextSparseMoeBlock replaces Qwen3NextSparseMoeBlock, not ${original.className}`);
    super("CalibrationQwen3NextSparseMoeBlock", original, original.shape, options);
    if (original.hasChild("shared_expert")) {
      this.addModule("shared_expert", original.child("shared_expert"));
      this.addModule("shared_expert_gate", original.child("shared_expert_gate"));
    }
  }

  override async forward(hidden: Tensor): Promise<Tensor> {
    const routed = await super.forward(hidden);
    const shared = await gatedSharedExpert(this, hidden.reshape([hidden.size / this.shape.hidden, this.shape.hidden]));
    return shared ? add(routed, shared.reshape(hidden.shape)) : routed;
  }
}

export function buildCalibrationQwen3NextSparseMoeBlock(
  original: AnyModule,
  _config: unknown,
  options: CalibrationOptions,
): MoECalibrationModule {
  return new CalibrationQwen3NextSparseMoeBlock(original, options);
}

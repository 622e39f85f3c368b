import type { Tensor } from "../engine/tensor.js";
import { UsageError } from "../errors.js";
import type { Qwen3MoeConfig } from "../models/qwen3_moe/config.js";
import { Qwen3MoeBlockBase, Qwen3MoeSparseMoeBlock } from "../models/qwen3_moe/modeling.js";
import type { AnyModule } from "../nn/module.js";
import type { FastState } from "./fast-path.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { addRoutedExperts } from "./routed-experts.js";

/**
 * Calibration version of Qwen3MoeSparseMoeBlock (llm-compressor's
 * CalibrationQwen3MoeSparseMoeBlock): the original's router gate and experts, routing exactly as
 * the original, then every expert on all tokens (or its routed tokens only), routed rows weighted
 * and summed: the block's output is unchanged.
 */
export class CalibrationQwen3MoeSparseMoeBlock extends Qwen3MoeBlockBase implements MoECalibrationModule {
  readonly className = "CalibrationQwen3MoeSparseMoeBlock";
  readonly isPermanent = false;
  readonly calibrateAllExperts: boolean;
  readonly fastPath: boolean;
  readonly config: Qwen3MoeConfig;
  private readonly fastState: FastState = { sharedGateUp: null };

  constructor(original: AnyModule, options: CalibrationOptions) {
    super();
    if (!(original instanceof Qwen3MoeSparseMoeBlock))
      throw new UsageError(`CalibrationQwen3MoeSparseMoeBlock replaces Qwen3MoeSparseMoeBlock, not ${original.className}`);
    this.config = original.config;
    this.calibrateAllExperts = options.calibrateAllExperts;
    this.fastPath = options.fastPath ?? true;
    this.addModule("gate", original.gate);
    this.addModule("experts", original.experts);
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, routed } = await this.route(hidden);
    await addRoutedExperts(
      {
        flat,
        topScores: routing.topScores,
        selectedExperts: routing.selectedExperts,
        experts: this.experts.items(),
        calibrateAllExperts: this.calibrateAllExperts,
        fastPath: this.fastPath,
        fastState: this.fastState,
      },
      routed,
    );
    return routed.reshape(hidden.shape);
  }

  restore(original: AnyModule): AnyModule {
    return original;
  }
}

export function buildCalibrationQwen3MoeSparseMoeBlock(
  original: AnyModule,
  _config: unknown,
  options: CalibrationOptions,
): MoECalibrationModule {
  return new CalibrationQwen3MoeSparseMoeBlock(original, options);
}

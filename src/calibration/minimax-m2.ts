import type { Tensor } from "../engine/tensor.js";
import { UsageError } from "../errors.js";
import type { MiniMaxM2Config } from "../models/minimax_m2/config.js";
import { MiniMaxM2BlockBase, MiniMaxM2SparseMoeBlock } from "../models/minimax_m2/modeling.js";
import type { AnyModule } from "../nn/module.js";
import { type FastState, newFastState } from "./fast-path.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { addRoutedExperts } from "./routed-experts.js";

/**
 * llm-compressor's CalibrationMiniMaxM2SparseMoeBlock: the original's router, correction bias and
 * experts, routing exactly as the original, every expert on all tokens (or its routed tokens only),
 * the routed rows weighted and summed: the output is unchanged.
 */
export class CalibrationMiniMaxM2SparseMoeBlock extends MiniMaxM2BlockBase implements MoECalibrationModule {
  readonly className = "CalibrationMiniMaxM2SparseMoeBlock";
  readonly isPermanent = false;
  readonly calibrateAllExperts: boolean;
  readonly fastPath: boolean;
  readonly config: MiniMaxM2Config;
  private readonly fastState: FastState = newFastState();

  constructor(original: AnyModule, options: CalibrationOptions) {
    super();
    if (!(original instanceof MiniMaxM2SparseMoeBlock))
      throw new UsageError(`CalibrationMiniMaxM2SparseMoeBlock replaces MiniMaxM2SparseMoeBlock, not ${original.className}`);
    this.config = original.config;
    this.calibrateAllExperts = options.calibrateAllExperts;
    this.fastPath = options.fastPath ?? true;
    this.addModule("gate", original.gate);
    this.addModule("experts", original.experts);
    // the same parameter object: the bias the original loaded is the one that routes here
    if (original.config.useRoutingBias) this.adoptParam("e_score_correction_bias", original.parameter("e_score_correction_bias"));
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, routed } = await this.routeInput(hidden);
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

export function buildCalibrationMiniMaxM2SparseMoeBlock(
  original: AnyModule,
  _config: unknown,
  options: CalibrationOptions,
): MoECalibrationModule {
  return new CalibrationMiniMaxM2SparseMoeBlock(original, options);
}

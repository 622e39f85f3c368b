import type { Tensor } from "../engine/tensor.js";
import type { AnyModule } from "../nn/module.js";
import { type ExpertModule, SoftmaxMoeBlockBase, type SoftmaxMoeShape } from "../nn/softmax-moe.js";
import { type FastState, newFastState } from "./fast-path.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { addRoutedExperts } from "./routed-experts.js";

/**
 * The calibration version of a softmax-router MoE block (Qwen3-MoE's, Mixtral's): the original's
 * `gate` and `experts` objects, routing exactly as the original, then every expert on all tokens
 * (or its routed tokens only), the routed rows weighted and summed: the block's output is unchanged.
 */
export class CalibrationSoftmaxMoeBlock<X extends ExpertModule> extends SoftmaxMoeBlockBase<X> implements MoECalibrationModule {
  readonly isPermanent = false;
  readonly calibrateAllExperts: boolean;
  readonly fastPath: boolean;
  private readonly fastState: FastState = newFastState();

  constructor(
    readonly className: string,
    original: SoftmaxMoeBlockBase<X>,
    readonly shape: SoftmaxMoeShape,
    options: CalibrationOptions,
  ) {
    super();
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

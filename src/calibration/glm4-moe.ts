import { add } from "../engine/ops.js";
import type { Tensor } from "../engine/tensor.js";
import { UsageError } from "../errors.js";
import type { Glm4MoeBlockConfig } from "../models/glm4_moe/config.js";
import { Glm4MoeBlockBase, Glm4MoeMoE } from "../models/glm4_moe/modeling.js";
import type { AnyModule } from "../nn/module.js";
import { type FastState, newFastState } from "./fast-path.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { addRoutedExperts } from "./routed-experts.js";

/**
 * llm-compressor's CalibrationGlm4MoeMoE: the original's router, experts and shared experts,
 * routing exactly as the original, every expert on all tokens (or its routed tokens only), the
 * routed rows weighted and summed, plus the shared experts on every token: the output is unchanged.
 */
export class CalibrationGlm4MoeMoE extends Glm4MoeBlockBase implements MoECalibrationModule {
  readonly className: string = "CalibrationGlm4MoeMoE";
  readonly isPermanent = false;
  readonly calibrateAllExperts: boolean;
  readonly fastPath: boolean;
  readonly config: Glm4MoeBlockConfig;
  private readonly fastState: FastState = newFastState();

  constructor(original: AnyModule, options: CalibrationOptions) {
    super();
    if (!(original instanceof Glm4MoeMoE)) throw new UsageError(`CalibrationGlm4MoeMoE replaces Glm4MoeMoE, not ${original.className}`);
    this.config = original.config;
    this.calibrateAllExperts = options.calibrateAllExperts;
    this.fastPath = options.fastPath ?? true;
    this.addModule("gate", original.gate);
    this.addModule("experts", original.experts);
    if (original.shared_experts) this.addModule("shared_experts", original.shared_experts);
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, shared, routed } = await this.routeAndShare(hidden);
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
    return add(routed, shared).reshape(hidden.shape);
  }

  restore(original: AnyModule): AnyModule {
    return original;
  }
}

export function buildCalibrationGlm4MoeMoE(original: AnyModule, _config: unknown, options: CalibrationOptions): MoECalibrationModule {
  return new CalibrationGlm4MoeMoE(original, options);
}

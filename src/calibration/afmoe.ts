import type { Tensor } from "../engine/tensor.js";
import { add } from "../engine/ops.js";
import type { AnyModule } from "../nn/module.js";
import { UsageError } from "../errors.js";
import type { AfmoeConfig } from "../models/afmoe/config.js";
import { AfmoeMoE, AfmoeMoEBlock } from "../models/afmoe/modeling.js";
import type { CalibrationOptions, MoECalibrationModule } from "./module.js";
import { type FastState, newFastState } from "./fast-path.js";
import { addRoutedExperts } from "./routed-experts.js";

/**
 * Calibration version of AfmoeMoE (llm-compressor's CalibrationAfmoeMoE). With
 * calibrateAllExperts every expert runs on all tokens, so every expert Linear sees the whole
 * calibration set; only the routed rows, weighted by the router, are summed, so the block's
 * output is unchanged. Without it, experts run on their routed tokens only (and are still
 * called, with an empty batch, when they have none).
 */
export class CalibrationAfmoeMoE extends AfmoeMoEBlock implements MoECalibrationModule {
  readonly className = "CalibrationAfmoeMoE";
  readonly isPermanent = false;
  readonly calibrateAllExperts: boolean;
  /** use the all-experts fast path when no user hook watches an expert (default true) */
  readonly fastPath: boolean;
  private readonly fastState: FastState = newFastState();

  constructor(
    original: AnyModule,
    readonly config: AfmoeConfig,
    options: CalibrationOptions,
  ) {
    super();
    if (!(original instanceof AfmoeMoE)) throw new UsageError(`CalibrationAfmoeMoE replaces AfmoeMoE, not ${original.className}`);
    this.calibrateAllExperts = options.calibrateAllExperts;
    this.fastPath = options.fastPath ?? true;
    this.addModule("router", original.router);
    this.addModule("experts", original.experts);
    if (original.shared_experts) this.addModule("shared_experts", original.shared_experts);
    this.adoptParam("expert_bias", original.parameter("expert_bias"));
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    // Steps 1-2: routing decisions; shared experts on every token
    const { flat, topScores, selectedExperts, shared, routed } = await this.routeAndShare(hidden);
    // Steps 3-4: every expert, in order
    await addRoutedExperts(
      {
        flat,
        topScores,
        selectedExperts,
        experts: this.experts.items(),
        calibrateAllExperts: this.calibrateAllExperts,
        fastPath: this.fastPath,
        fastState: this.fastState,
      },
      routed,
    );
    // Step 5: shared + routed
    // the routed sum is this call's own array: the block's output is written over it
    return add(shared, routed, routed.data).reshape(hidden.shape);
  }

  restore(original: AnyModule): AnyModule {
    return original;
  }
}

export function buildCalibrationAfmoeMoE(original: AnyModule, config: unknown, options: CalibrationOptions): MoECalibrationModule {
  const c = (config ?? (original as { config?: unknown }).config) as AfmoeConfig | undefined;
  if (!c || typeof c !== "object" || !("numExpertsPerTok" in c)) throw new UsageError("CalibrationAfmoeMoE needs the AFMoE model config");
  return new CalibrationAfmoeMoE(original, c, options);
}

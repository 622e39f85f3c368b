import type { AnyModule } from "../nn/module.js";

export interface CalibrationOptions {
  /** run every expert on every token (default true) */
  calibrateAllExperts: boolean;
  /** allow a module's fast path for calibrate-all-experts (default true); false forces the per-expert path */
  fastPath?: boolean;
}

/**
 * A calibration replacement for an MoE block (llm-compressor's MoECalibrationModule).
 * It holds the original's submodules themselves, so statistics attached to them survive.
 */
export interface MoECalibrationModule extends AnyModule {
  /** permanent replacements stay after the calibration context ends */
  readonly isPermanent: boolean;
  /** the module to put back when the context ends (a permanent module returns itself) */
  restore(original: AnyModule): AnyModule;
}

/** Builds the calibration module from (original module, model config, options). */
export type CalibrationModuleFactory = (original: AnyModule, config: unknown, options: CalibrationOptions) => MoECalibrationModule;

import type { AnyModule } from "../nn/module.js";
import type { CalibrationModuleFactory, CalibrationOptions, MoECalibrationModule } from "./module.js";
import { MOE_CALIBRATION_REGISTRY, standardizeClassName } from "./registry.js";

export interface MoeCalibrationContextOptions {
  calibrateAllExperts?: boolean;
  /** allow the all-experts fast path (default true) */
  fastPath?: boolean;
  /** the model config handed to calibration modules (default: `model.config`) */
  config?: unknown;
  /** registry to use (default: MOE_CALIBRATION_REGISTRY) */
  registry?: ReadonlyMap<string, CalibrationModuleFactory>;
}

interface Swap {
  name: string;
  original: AnyModule;
  replacement: MoECalibrationModule;
}

/**
 * Replace every registered MoE block of `model` by its calibration module, run `fn`, and put
 * every non-permanent replacement back in a `finally`: after a normal return, when `fn`
 * throws, and when building a replacement throws halfway (what was swapped goes back).
 */
export async function withMoeCalibration<M extends AnyModule, T>(
  model: M,
  options: MoeCalibrationContextOptions,
  fn: (model: M) => Promise<T>,
): Promise<T> {
  const registry = options.registry ?? MOE_CALIBRATION_REGISTRY;
  const config = options.config ?? (model as { config?: unknown }).config;
  const calibration: CalibrationOptions = { calibrateAllExperts: options.calibrateAllExperts ?? true, fastPath: options.fastPath ?? true };
  const swaps: Swap[] = [];
  try {
    for (const [name, module] of model.namedModules()) {
      const factory = registry.get(standardizeClassName(module.className));
      if (!factory || name === "") continue;
      const replacement = factory(module, config, calibration);
      model.setSubmodule(name, replacement);
      swaps.push({ name, original: module, replacement });
    }
    return await fn(model);
  } finally {
    for (const s of swaps.reverse()) {
      if (!s.replacement.isPermanent) model.setSubmodule(s.name, s.replacement.restore(s.original));
    }
  }
}

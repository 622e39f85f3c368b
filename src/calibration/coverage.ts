import type { AnyModule } from "../nn/module.js";
import { registerFastAwareHook } from "./observers.js";
import type { Tensor } from "../engine/tensor.js";
import { AfmoeMoE, type AfmoeTokenChoiceRouter, type RouterInput, type RouterOutput } from "../models/afmoe/modeling.js";

/** Per MoE layer: tokens routed to each expert, and rows each expert's Linear layers saw. */
export interface LayerCoverage {
  routed: number[];
  seen: number[];
}

export interface Coverage {
  layers: Record<string, LayerCoverage>;
}

export interface CoverageTracker {
  coverage: Coverage;
  remove(): void;
}

const LAYER_MLP = /^(?:.*\.)?layers\.(\d+)\.mlp$/;

/**
 * Count, for every AfmoeMoE block of `model` (found by class name), the tokens its router
 * sends to each expert and the rows each expert's gate_proj receives. Hooks live on the
 * router and expert objects, so counting continues inside the calibration context.
 */
export function trackCoverage(model: AnyModule, prefix = ""): CoverageTracker {
  const coverage: Coverage = { layers: {} };
  const removers: (() => void)[] = [];
  for (const [name, m] of model.namedModules(prefix)) {
    const match = LAYER_MLP.exec(name);
    if (!match || !(m instanceof AfmoeMoE)) continue;
    const E = m.config.numExperts;
    const layer: LayerCoverage = { routed: new Array<number>(E).fill(0), seen: new Array<number>(E).fill(0) };
    coverage.layers[match[1] as string] = layer;
    const router: AfmoeTokenChoiceRouter = m.router;
    removers.push(
      router.registerForwardHook((_r: AnyModule, _in: RouterInput, out: RouterOutput) => {
        for (const e of out.selectedExperts) layer.routed[e] = (layer.routed[e] as number) + 1;
      }),
    );
    m.experts.items().forEach((expert, e) => {
      const saw = (n: number): void => {
        layer.seen[e] = (layer.seen[e] as number) + n;
      };
      removers.push(
        registerFastAwareHook(expert.gate_proj, (x: Tensor) => saw(x.size / expert.gate_proj.inFeatures), {
          wantsGram: false,
          rows: (n) => saw(n),
          shareWith: () => undefined,
        }),
      );
    });
  }
  return {
    coverage,
    remove: () => {
      for (const r of removers) r();
    },
  };
}

import type { AnyModule } from "../nn/module.js";
import { registerFastAwareHook } from "./fast-observers.js";
import type { Tensor } from "../engine/tensor.js";
import { type MoeRouting, asMoeBlock } from "../nn/moe.js";

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

/** A decoder layer's direct child (`mlp`, `block_sparse_moe`, ...): where an MoE block sits. */
const LAYER_CHILD = /^(?:.*\.)?layers\.(\d+)\.[A-Za-z_]+$/;

/**
 * Count, for every MoE block of `model` (recognised by the MoeBlock interface), the tokens its
 * router sends to each expert and the rows each expert's gate projection receives. Hooks live on the
 * router and expert objects, so counting continues inside the calibration context.
 */
export function trackCoverage(model: AnyModule, prefix = ""): CoverageTracker {
  const coverage: Coverage = { layers: {} };
  const removers: (() => void)[] = [];
  for (const [name, m] of model.namedModules(prefix)) {
    const match = LAYER_CHILD.exec(name);
    const block = match ? asMoeBlock(m) : null;
    if (!match || !block) continue;
    const E = block.numRoutedExperts;
    const layer: LayerCoverage = { routed: new Array<number>(E).fill(0), seen: new Array<number>(E).fill(0) };
    coverage.layers[match[1] as string] = layer;
    removers.push(
      block.onRouting((routing: MoeRouting) => {
        for (const e of routing.selectedExperts) layer.routed[e] = (layer.routed[e] as number) + 1;
      }),
    );
    block.routedExperts().forEach((expert, e) => {
      const saw = (n: number): void => {
        layer.seen[e] = (layer.seen[e] as number) + n;
      };
      removers.push(
        registerFastAwareHook(expert.gate, (x: Tensor) => saw(x.size / expert.gate.inFeatures), {
          wantsGram: false,
          routedWeight: null,
          rows: (n) => saw(n),
          shareWith: () => undefined,
          shareRouted: () => undefined,
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

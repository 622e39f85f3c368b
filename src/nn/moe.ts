/**
 * The view of an MoE block that calibration tooling needs, whatever a family calls its parts:
 * its routed experts (each a gate, an up and a down projection, under any on-disk names) and the
 * routing decisions of its router (the experts each token was sent to).
 */
import type { Linear } from "./layers.js";
import type { AnyModule } from "./module.js";

export interface MoeExpert {
  readonly gate: Linear;
  readonly up: Linear;
  readonly down: Linear;
}

export interface MoeRouting {
  /** [T, K] expert indices, best first */
  readonly selectedExperts: Int32Array;
}

export interface MoeBlock {
  readonly numRoutedExperts: number;
  /** Call `observe` with every routing decision the block's router makes (a hook on the router; returns its remover). */
  onRouting(observe: (routing: MoeRouting) => void): () => void;
  routedExperts(): readonly MoeExpert[];
}

/** `m` seen as an MoE block, or null when it is none. */
export function asMoeBlock(m: AnyModule): (AnyModule & MoeBlock) | null {
  return typeof (m as Partial<MoeBlock>).routedExperts === "function" && typeof (m as Partial<MoeBlock>).onRouting === "function"
    ? (m as AnyModule & MoeBlock)
    : null;
}

/**
 * The MoE block of the softmax-router families (Qwen3-MoE, Mixtral): a `gate` Linear [E, H] whose
 * logits are softmaxed over all experts, the top K kept (renormalised to sum 1 where the family
 * says so), and the routed SwiGLU experts' outputs weighted by them. No shared expert.
 */
import { Tensor } from "../engine/tensor.js";
import { Linear } from "./layers.js";
import { Module, ModuleList } from "./module.js";
import { type MoeBlock, type MoeExpert, type MoeRouting, type SoftmaxRouting, addServedExperts, softmaxTopK } from "./moe.js";

export interface SoftmaxMoeShape {
  hidden: number;
  experts: number;
  topK: number;
  /** divide the K kept probabilities by their sum */
  renormalize: boolean;
}

export type ExpertModule = MoeExpert & Module<Tensor, Tensor>;

/** What a softmax-router block and its calibration module share: the `gate` router and the `experts`, by the checkpoint's names. */
export abstract class SoftmaxMoeBlockBase<X extends ExpertModule> extends Module<Tensor, Tensor> implements MoeBlock {
  abstract readonly shape: SoftmaxMoeShape;

  get gate(): Linear {
    return this.child("gate");
  }
  get experts(): ModuleList<X> {
    return this.child("experts");
  }
  get numRoutedExperts(): number {
    return this.shape.experts;
  }
  routedExperts(): readonly X[] {
    return this.experts.items();
  }
  /** The router is the `gate` Linear: its logits, routed again here, are the decisions (a hook on it survives the calibration swap). */
  onRouting(observe: (routing: MoeRouting) => void): () => void {
    return this.gate.registerForwardHook((_m, _x, logits: Tensor) => {
      observe(softmaxTopK(logits, this.shape.topK, this.shape.renormalize));
    });
  }

  /** The [B, S, H] input as [T, H], its routing, and a zero routed sum. */
  protected async route(hidden: Tensor): Promise<{ flat: Tensor; routing: SoftmaxRouting; routed: Tensor }> {
    const H = this.shape.hidden;
    const flat = hidden.reshape([hidden.size / H, H]);
    const routing = softmaxTopK(await this.gate.call(flat), this.shape.topK, this.shape.renormalize);
    return { flat, routing, routed: Tensor.zeros([flat.dim(0), H]) };
  }
}

/** The block as served: each expert runs on its routed tokens only. */
export abstract class SoftmaxMoeBlock<X extends ExpertModule> extends SoftmaxMoeBlockBase<X> {
  /** `gate` and `experts` declared under the checkpoint's names */
  protected declareChildren(makeExpert: () => X): void {
    this.addModule("gate", new Linear(this.shape.hidden, this.shape.experts));
    this.addModule("experts", new ModuleList(Array.from({ length: this.shape.experts }, makeExpert)));
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, routed } = await this.route(hidden);
    await addServedExperts({ flat, ...routing }, this.experts.items(), routed);
    return routed.reshape(hidden.shape);
  }
}

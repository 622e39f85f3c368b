/**
 * Mixtral, module by module, under the Hugging Face checkpoint names (`block_sparse_moe`, experts
 * `w1` gate / `w3` up / `w2` down). Exact semantics: transformers' modeling_mixtral.py.
 */
import type { Tensor } from "../../engine/tensor.js";
import { RopeAttention } from "../../nn/attention.js";
import { Linear } from "../../nn/layers.js";
import { plainSwigluInto, swigluForward } from "../../nn/mlp.js";
import { Module } from "../../nn/module.js";
import type { MoeExpert } from "../../nn/moe.js";
import { SoftmaxMoeBlock, type SoftmaxMoeShape } from "../../nn/softmax-moe.js";
import type { MixtralConfig } from "./config.js";
import { DecoderForCausalLM, DecoderModel, PreNormDecoderLayer } from "../causal-lm.js";

/** A Mixtral expert: w2(silu(w1(x)) * w3(x)). */
export class MixtralBlockSparseTop2MLP extends Module<Tensor, Tensor> implements MoeExpert {
  readonly className: string = "MixtralBlockSparseTop2MLP";

  constructor(hidden: number, intermediate: number) {
    super();
    this.addModule("w1", new Linear(hidden, intermediate));
    this.addModule("w2", new Linear(intermediate, hidden));
    this.addModule("w3", new Linear(hidden, intermediate));
  }

  get gate(): Linear {
    return this.child("w1");
  }
  get up(): Linear {
    return this.child("w3");
  }
  get down(): Linear {
    return this.child("w2");
  }

  async forward(x: Tensor): Promise<Tensor> {
    return swigluForward(this, x);
  }

  forwardInto(x: Tensor, out: Float32Array): Promise<Tensor | null> {
    return plainSwigluInto(this, x, out);
  }
}

/** The shape of a Mixtral block's routing: softmax, top-K, always renormalised. */
export function mixtralShape(config: MixtralConfig): SoftmaxMoeShape {
  return { hidden: config.hiddenSize, experts: config.numExperts, topK: config.numExpertsPerTok, renormalize: true };
}

/** `MixtralSparseMoeBlock`: router `gate`, experts with `w1` / `w3` / `w2`. */
export class MixtralSparseMoeBlock extends SoftmaxMoeBlock<MixtralBlockSparseTop2MLP> {
  readonly className: string = "MixtralSparseMoeBlock";
  readonly shape: SoftmaxMoeShape;

  constructor(readonly config: MixtralConfig) {
    super();
    this.shape = mixtralShape(config);
    this.declareChildren(() => new MixtralBlockSparseTop2MLP(config.hiddenSize, config.intermediateSize));
  }
}

export class MixtralAttention extends RopeAttention {
  override readonly className = "MixtralAttention";

  constructor(config: MixtralConfig) {
    super({
      hidden: config.hiddenSize,
      heads: config.numAttentionHeads,
      kvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      ropeTheta: config.ropeTheta,
      qkNormEps: null,
      window: config.slidingWindow,
    });
  }
}

/** Pre-norm decoder layer whose MoE block is `block_sparse_moe`. */
export class MixtralDecoderLayer extends PreNormDecoderLayer {
  override readonly className = "MixtralDecoderLayer";

  constructor(readonly config: MixtralConfig) {
    super(config, new MixtralAttention(config), "block_sparse_moe", new MixtralSparseMoeBlock(config));
  }
}

export class MixtralModel extends DecoderModel<MixtralDecoderLayer> {
  override readonly className = "MixtralModel";

  constructor(readonly config: MixtralConfig) {
    super(config, () => new MixtralDecoderLayer(config));
  }
}

export class MixtralForCausalLM extends DecoderForCausalLM<MixtralModel> {
  override readonly className = "MixtralForCausalLM";

  constructor(readonly config: MixtralConfig) {
    super(new MixtralModel(config), config);
  }
}

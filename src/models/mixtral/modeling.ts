/**
 * Mixtral, module by module, under the Hugging Face checkpoint names (`block_sparse_moe`, experts
 * `w1` gate / `w3` up / `w2` down). Exact semantics: transformers' modeling_mixtral.py.
 */
import { add, swiglu } from "../../engine/ops.js";
import type { Tensor } from "../../engine/tensor.js";
import { RopeAttention } from "../../nn/attention.js";
import { Linear, RMSNorm } from "../../nn/layers.js";
import { Module, ModuleList } from "../../nn/module.js";
import type { MoeExpert } from "../../nn/moe.js";
import { SoftmaxMoeBlock, type SoftmaxMoeShape } from "../../nn/softmax-moe.js";
import type { MixtralConfig } from "./config.js";
import { DecoderForCausalLM, DecoderModel } from "../causal-lm.js";

/** A Mixtral expert: w2(silu(w1(x)) * w3(x)). */
export class MixtralBlockSparseTop2MLP extends Module<Tensor, Tensor> implements MoeExpert {
  readonly className = "MixtralBlockSparseTop2MLP";

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
    return this.down.call(swiglu(await this.gate.call(x), await this.up.call(x)));
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
    this.declareChildren(
      () => new MixtralBlockSparseTop2MLP(config.hiddenSize, config.intermediateSize),
      (experts) => new ModuleList(experts),
    );
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

/** Pre-norm decoder layer: h + attn(norm(h)), then + block_sparse_moe(norm(h)). */
export class MixtralDecoderLayer extends Module<Tensor, Tensor> {
  readonly className = "MixtralDecoderLayer";

  constructor(readonly config: MixtralConfig) {
    super();
    this.addModule("self_attn", new MixtralAttention(config));
    this.addModule("block_sparse_moe", new MixtralSparseMoeBlock(config));
    this.addModule("input_layernorm", new RMSNorm(config.hiddenSize, config.rmsNormEps));
    this.addModule("post_attention_layernorm", new RMSNorm(config.hiddenSize, config.rmsNormEps));
  }

  async forward(h: Tensor): Promise<Tensor> {
    const sub = (n: string): Module<Tensor, Tensor> => this.child(n);
    const h1 = add(h, await sub("self_attn").call(await sub("input_layernorm").call(h)));
    return add(h1, await sub("block_sparse_moe").call(await sub("post_attention_layernorm").call(h1)));
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

/**
 * Qwen3-MoE, module by module, under the Hugging Face checkpoint names.
 * Exact semantics: Hugging Face transformers' modeling_qwen3_moe.py (per-expert layout).
 */
import type { Tensor } from "../../engine/tensor.js";
import { add } from "../../engine/ops.js";
import { RopeAttention } from "../../nn/attention.js";
import { RMSNorm } from "../../nn/layers.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { Module, ModuleList } from "../../nn/module.js";
import { SoftmaxMoeBlock, type SoftmaxMoeShape } from "../../nn/softmax-moe.js";
import { type Qwen3MoeConfig, isQwen3MoeLayer } from "./config.js";
import { DecoderForCausalLM, DecoderModel } from "../causal-lm.js";

export class Qwen3MoeMLP extends SwiGluMLP {
  override readonly className = "Qwen3MoeMLP";
}

/** The shape of a Qwen3-MoE block's routing. */
export function qwen3MoeShape(config: Qwen3MoeConfig): SoftmaxMoeShape {
  return { hidden: config.hiddenSize, experts: config.numExperts, topK: config.numExpertsPerTok, renormalize: config.normTopkProb };
}

/** `Qwen3MoeSparseMoeBlock`: softmax router, top-K experts weighted by their (renormalised) probabilities; no shared expert. */
export class Qwen3MoeSparseMoeBlock extends SoftmaxMoeBlock<Qwen3MoeMLP> {
  readonly className: string = "Qwen3MoeSparseMoeBlock";
  readonly shape: SoftmaxMoeShape;

  constructor(readonly config: Qwen3MoeConfig) {
    super();
    this.shape = qwen3MoeShape(config);
    this.declareChildren(
      () => new Qwen3MoeMLP(config.hiddenSize, config.moeIntermediateSize),
      (experts) => new ModuleList(experts),
    );
  }
}

/** Grouped-query attention with per-head q/k RMSNorm before RoPE (rotate-half, every layer). */
export class Qwen3MoeAttention extends RopeAttention {
  override readonly className = "Qwen3MoeAttention";

  constructor(config: Qwen3MoeConfig) {
    super({
      hidden: config.hiddenSize,
      heads: config.numAttentionHeads,
      kvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      ropeTheta: config.ropeTheta,
      qkNormEps: config.rmsNormEps,
      window: config.slidingWindow,
    });
  }
}

/** Pre-norm decoder layer: h + attn(norm(h)), then + mlp(norm(h)). */
export class Qwen3MoeDecoderLayer extends Module<Tensor, Tensor> {
  readonly className = "Qwen3MoeDecoderLayer";

  constructor(
    readonly config: Qwen3MoeConfig,
    readonly layerIndex: number,
  ) {
    super();
    const H = config.hiddenSize;
    this.addModule("self_attn", new Qwen3MoeAttention(config));
    this.addModule(
      "mlp",
      isQwen3MoeLayer(config, layerIndex) ? new Qwen3MoeSparseMoeBlock(config) : new Qwen3MoeMLP(H, config.intermediateSize),
    );
    this.addModule("input_layernorm", new RMSNorm(H, config.rmsNormEps));
    this.addModule("post_attention_layernorm", new RMSNorm(H, config.rmsNormEps));
  }

  get mlp(): Module<Tensor, Tensor> {
    return this.child("mlp");
  }

  async forward(h: Tensor): Promise<Tensor> {
    const sub = (n: string): Module<Tensor, Tensor> => this.child(n);
    const h1 = add(h, await sub("self_attn").call(await sub("input_layernorm").call(h)));
    return add(h1, await sub("mlp").call(await sub("post_attention_layernorm").call(h1)));
  }
}

export class Qwen3MoeModel extends DecoderModel<Qwen3MoeDecoderLayer> {
  override readonly className = "Qwen3MoeModel";

  constructor(readonly config: Qwen3MoeConfig) {
    super(config, (i) => new Qwen3MoeDecoderLayer(config, i));
  }
}

export class Qwen3MoeForCausalLM extends DecoderForCausalLM<Qwen3MoeModel> {
  override readonly className = "Qwen3MoeForCausalLM";

  constructor(readonly config: Qwen3MoeConfig) {
    super(new Qwen3MoeModel(config), config);
  }
}

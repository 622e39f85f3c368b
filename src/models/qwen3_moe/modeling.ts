/**
 * Qwen3-MoE, module by module, under the Hugging Face checkpoint names.
 * Exact semantics: Hugging Face transformers' modeling_qwen3_moe.py (per-expert layout).
 */
import { RopeAttention } from "../../nn/attention.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { SoftmaxMoeBlock, type SoftmaxMoeShape } from "../../nn/softmax-moe.js";
import { type Qwen3MoeConfig, isQwen3MoeLayer } from "./config.js";
import { DecoderForCausalLM, DecoderModel, PreNormDecoderLayer } from "../causal-lm.js";

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
    this.declareChildren(() => new Qwen3MoeMLP(config.hiddenSize, config.moeIntermediateSize));
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
export class Qwen3MoeDecoderLayer extends PreNormDecoderLayer {
  override readonly className = "Qwen3MoeDecoderLayer";

  constructor(
    readonly config: Qwen3MoeConfig,
    readonly layerIndex: number,
  ) {
    const mlp = isQwen3MoeLayer(config, layerIndex)
      ? new Qwen3MoeSparseMoeBlock(config)
      : new Qwen3MoeMLP(config.hiddenSize, config.intermediateSize);
    super(config, new Qwen3MoeAttention(config), "mlp", mlp);
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

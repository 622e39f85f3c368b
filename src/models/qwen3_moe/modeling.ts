/**
 * Qwen3-MoE, module by module, under the Hugging Face checkpoint names.
 * Exact semantics: Hugging Face transformers' modeling_qwen3_moe.py (per-expert layout).
 */
import type { Tensor } from "../../engine/tensor.js";
import { add } from "../../engine/ops.js";
import { RopeAttention } from "../../nn/attention.js";
import { Embedding, Linear, RMSNorm, type TokenIds } from "../../nn/layers.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { Module, ModuleList } from "../../nn/module.js";
import { SoftmaxMoeBlock, type SoftmaxMoeShape } from "../../nn/softmax-moe.js";
import type { CausalLMInput, CausalLMOutput } from "../family.js";
import { type Qwen3MoeConfig, isQwen3MoeLayer } from "./config.js";

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

export class Qwen3MoeModel extends Module<TokenIds, Tensor> {
  readonly className = "Qwen3MoeModel";

  constructor(readonly config: Qwen3MoeConfig) {
    super();
    this.addModule("embed_tokens", new Embedding(config.vocabSize, config.hiddenSize));
    this.addModule("layers", new ModuleList(Array.from({ length: config.numHiddenLayers }, (_, i) => new Qwen3MoeDecoderLayer(config, i))));
    this.addModule("norm", new RMSNorm(config.hiddenSize, config.rmsNormEps));
  }

  get embed_tokens(): Embedding {
    return this.child("embed_tokens");
  }
  get layers(): ModuleList<Qwen3MoeDecoderLayer> {
    return this.child("layers");
  }
  get norm(): RMSNorm {
    return this.child("norm");
  }

  /** The input of layer 0: the embeddings (not scaled). */
  embed(ids: TokenIds): Promise<Tensor> {
    return this.embed_tokens.call(ids);
  }

  async forward(ids: TokenIds): Promise<Tensor> {
    let h = await this.embed(ids);
    for (const layer of this.layers.items()) h = await layer.call(h);
    return this.norm.call(h);
  }
}

export class Qwen3MoeForCausalLM extends Module<CausalLMInput, CausalLMOutput> {
  readonly className = "Qwen3MoeForCausalLM";

  constructor(readonly config: Qwen3MoeConfig) {
    super();
    this.addModule("model", new Qwen3MoeModel(config));
    this.addModule("lm_head", new Linear(config.hiddenSize, config.vocabSize));
  }

  get model(): Qwen3MoeModel {
    return this.child("model");
  }
  get lm_head(): Linear {
    return this.child("lm_head");
  }

  async forward({ ids, outputHiddenStates = false }: CausalLMInput): Promise<CausalLMOutput> {
    const hiddenStates: Tensor[] = [];
    let h = await this.model.embed(ids);
    if (outputHiddenStates) hiddenStates.push(h);
    for (const layer of this.model.layers.items()) {
      h = await layer.call(h);
      if (outputHiddenStates) hiddenStates.push(h);
    }
    return { logits: await this.lm_head.call(await this.model.norm.call(h)), hiddenStates };
  }
}

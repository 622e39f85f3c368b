/**
 * The decoder-only skeleton every family shares, under Hugging Face's names: `model.embed_tokens`,
 * `model.layers.{i}`, `model.norm`, `lm_head`. A family supplies its decoder layers (and, where it
 * scales embeddings, its own `embed`).
 */
import { add } from "../engine/ops.js";
import type { Tensor } from "../engine/tensor.js";
import { Embedding, Linear, RMSNorm, type TokenIds } from "../nn/layers.js";
import { Module, ModuleList } from "../nn/module.js";
import type { CausalLMInput, CausalLMOutput, DecoderLayer } from "./family.js";

export interface DecoderShape {
  vocabSize: number;
  hiddenSize: number;
  numHiddenLayers: number;
  rmsNormEps: number;
}

/**
 * The Llama-style pre-norm decoder layer: h + self_attn(input_layernorm(h)), then
 * + mlp(post_attention_layernorm(h)); the MLP (or MoE block) sits under the family's name for it.
 */
export class PreNormDecoderLayer extends Module<Tensor, Tensor> {
  readonly className: string = "PreNormDecoderLayer";

  constructor(
    shape: Pick<DecoderShape, "hiddenSize" | "rmsNormEps">,
    attention: Module<Tensor, Tensor>,
    private readonly mlpName: string,
    mlp: Module<Tensor, Tensor>,
  ) {
    super();
    this.addModule("self_attn", attention);
    this.addModule(mlpName, mlp);
    this.addModule("input_layernorm", new RMSNorm(shape.hiddenSize, shape.rmsNormEps));
    this.addModule("post_attention_layernorm", new RMSNorm(shape.hiddenSize, shape.rmsNormEps));
  }

  async forward(h: Tensor): Promise<Tensor> {
    const sub = (n: string): Module<Tensor, Tensor> => this.child(n);
    const h1 = add(h, await sub("self_attn").call(await sub("input_layernorm").call(h)));
    return add(h1, await sub(this.mlpName).call(await sub("post_attention_layernorm").call(h1)));
  }
}

export class DecoderModel<L extends DecoderLayer> extends Module<TokenIds, Tensor> {
  readonly className: string = "DecoderModel";

  constructor(shape: DecoderShape, layer: (index: number) => L) {
    super();
    this.addModule("embed_tokens", new Embedding(shape.vocabSize, shape.hiddenSize));
    this.addModule("layers", new ModuleList(Array.from({ length: shape.numHiddenLayers }, (_, i) => layer(i))));
    this.addModule("norm", new RMSNorm(shape.hiddenSize, shape.rmsNormEps));
  }

  get embed_tokens(): Embedding {
    return this.child("embed_tokens");
  }
  get layers(): ModuleList<L> {
    return this.child("layers");
  }
  get norm(): RMSNorm {
    return this.child("norm");
  }

  /** The input of layer 0: the embeddings (a family that scales them overrides this). */
  embed(ids: TokenIds): Promise<Tensor> {
    return this.embed_tokens.call(ids);
  }

  async forward(ids: TokenIds): Promise<Tensor> {
    let h = await this.embed(ids);
    for (const layer of this.layers.items()) h = await layer.call(h);
    return this.norm.call(h);
  }
}

export class DecoderForCausalLM<M extends DecoderModel<DecoderLayer>> extends Module<CausalLMInput, CausalLMOutput> {
  readonly className: string = "DecoderForCausalLM";

  constructor(model: M, shape: DecoderShape) {
    super();
    this.addModule("model", model);
    this.addModule("lm_head", new Linear(shape.hiddenSize, shape.vocabSize));
  }

  get model(): M {
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

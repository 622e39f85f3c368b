/**
 * Qwen3-MoE, module by module, under the Hugging Face checkpoint names.
 * Exact semantics: Hugging Face transformers' modeling_qwen3_moe.py (per-expert layout).
 */
import { Tensor } from "../../engine/tensor.js";
import { add, applyRopeInPlace, gatherRows, indexAddWeighted, rmsNorm, softmaxRowInPlace, topkIndices } from "../../engine/ops.js";
import { causalAttention, fromHeads, toHeads } from "../../nn/attention.js";
import { Embedding, Linear, RMSNorm, type TokenIds } from "../../nn/layers.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { Module, ModuleList } from "../../nn/module.js";
import { type MoeBlock, type MoeRouting, routeWeights, routedPairs } from "../../nn/moe.js";
import type { CausalLMInput, CausalLMOutput } from "../family.js";
import { type Qwen3MoeConfig, isQwen3MoeLayer } from "./config.js";

export class Qwen3MoeMLP extends SwiGluMLP {
  override readonly className = "Qwen3MoeMLP";
}

export interface Qwen3MoeRouting extends MoeRouting {
  /** [T, K] combine weights of the selected experts (renormalised when norm_topk_prob) */
  readonly topScores: Tensor;
}

/** softmax over all experts in float32, top-K descending, renormalised to sum 1 when `normalize`. */
export function qwen3Route(logits: Tensor, K: number, normalize: boolean): Qwen3MoeRouting {
  const [T, E] = [logits.dim(0), logits.dim(1)];
  const probs = new Float32Array(logits.data);
  for (let t = 0; t < T; t++) softmaxRowInPlace(probs, t * E, E);
  const selectedExperts = topkIndices(new Tensor(probs, [T, E]), K);
  const top = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    let sum = 0;
    for (let k = 0; k < K; k++) {
      const p = probs[t * E + (selectedExperts[t * K + k] as number)] as number;
      top[t * K + k] = p;
      sum += p;
    }
    if (normalize) for (let k = 0; k < K; k++) top[t * K + k] = Math.fround((top[t * K + k] as number) / sum);
  }
  return { topScores: new Tensor(top, [T, K]), selectedExperts };
}

/** What the MoE block and its calibration module share: the router gate and the experts, by the checkpoint's names. */
export abstract class Qwen3MoeBlockBase extends Module<Tensor, Tensor> implements MoeBlock {
  abstract readonly config: Qwen3MoeConfig;

  get gate(): Linear {
    return this.child("gate");
  }
  get experts(): ModuleList<Qwen3MoeMLP> {
    return this.child("experts");
  }
  get numRoutedExperts(): number {
    return this.config.numExperts;
  }
  routedExperts(): readonly Qwen3MoeMLP[] {
    return this.experts.items();
  }
  /** The router is the `gate` Linear: its logits, routed again here, are the decisions. */
  onRouting(observe: (routing: MoeRouting) => void): () => void {
    return this.gate.registerForwardHook((_m, _x, logits: Tensor) => {
      observe(qwen3Route(logits, this.config.numExpertsPerTok, this.config.normTopkProb));
    });
  }

  /** The [B, S, H] input as [T, H], its routing, and a zero routed sum. */
  protected async route(hidden: Tensor): Promise<{ flat: Tensor; routing: Qwen3MoeRouting; routed: Tensor }> {
    const H = this.config.hiddenSize;
    const flat = hidden.reshape([hidden.size / H, H]);
    const logits = await this.gate.call(flat);
    const routing = qwen3Route(logits, this.config.numExpertsPerTok, this.config.normTopkProb);
    return { flat, routing, routed: Tensor.zeros([flat.dim(0), H]) };
  }
}

/** `Qwen3MoeSparseMoeBlock`: softmax router, top-K experts weighted by their (renormalised) probabilities; no shared expert. */
export class Qwen3MoeSparseMoeBlock extends Qwen3MoeBlockBase {
  readonly className: string = "Qwen3MoeSparseMoeBlock";

  constructor(readonly config: Qwen3MoeConfig) {
    super();
    this.addModule("gate", new Linear(config.hiddenSize, config.numExperts));
    this.addModule(
      "experts",
      new ModuleList(Array.from({ length: config.numExperts }, () => new Qwen3MoeMLP(config.hiddenSize, config.moeIntermediateSize))),
    );
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, routed } = await this.route(hidden);
    const T = flat.dim(0);
    const K = this.config.numExpertsPerTok;
    for (const [e, expert] of this.experts.items().entries()) {
      const { tokens, slots } = routedPairs(routing.selectedExperts, T, K, e);
      if (tokens.length === 0) continue;
      const out = await expert.call(gatherRows(flat, tokens));
      indexAddWeighted(routed, tokens, out, routeWeights(routing.topScores, tokens, slots));
    }
    return routed.reshape(hidden.shape);
  }
}

/** Grouped-query attention with per-head q/k RMSNorm before RoPE (rotate-half, every layer). */
export class Qwen3MoeAttention extends Module<Tensor, Tensor> {
  readonly className = "Qwen3MoeAttention";

  constructor(readonly config: Qwen3MoeConfig) {
    super();
    const { hiddenSize: H, numAttentionHeads: nH, numKeyValueHeads: nKV, headDim: D } = config;
    this.addModule("q_proj", new Linear(H, nH * D));
    this.addModule("k_proj", new Linear(H, nKV * D));
    this.addModule("v_proj", new Linear(H, nKV * D));
    this.addModule("o_proj", new Linear(nH * D, H));
    this.addModule("q_norm", new RMSNorm(D, config.rmsNormEps));
    this.addModule("k_norm", new RMSNorm(D, config.rmsNormEps));
  }

  async forward(x: Tensor): Promise<Tensor> {
    const c = this.config;
    const [B, S] = [x.dim(0), x.dim(1)];
    const { numAttentionHeads: nH, numKeyValueHeads: nKV, headDim: D } = c;
    const lin = (n: string): Linear => this.child(n);
    const normW = (n: string): Tensor => this.child<RMSNorm>(n).param("weight");
    const q = rmsNorm((await lin("q_proj").call(x)).reshape([B * S * nH, D]), normW("q_norm"), c.rmsNormEps);
    const k = rmsNorm((await lin("k_proj").call(x)).reshape([B * S * nKV, D]), normW("k_norm"), c.rmsNormEps);
    const v = await lin("v_proj").call(x);
    applyRopeInPlace(q.data, B, S, nH, D, c.ropeTheta);
    applyRopeInPlace(k.data, B, S, nKV, D, c.ropeTheta);
    const ctx = await causalAttention(toHeads(q.data, B, S, nH, D), toHeads(k.data, B, S, nKV, D), toHeads(v.data, B, S, nKV, D), {
      B,
      S,
      nH,
      nKV,
      D,
      window: c.slidingWindow,
    });
    return lin("o_proj").call(new Tensor(fromHeads(ctx, B, S, nH, D), [B, S, nH * D]));
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

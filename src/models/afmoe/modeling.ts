/**
 * AFMoE (Arcee Trinity), module by module, as the Hugging Face remote code names them.
 * Exact semantics: docs/afmoe.md.
 */
import { applyRopeInPlace } from "../../nn/rope.js";
import { Tensor } from "../../engine/tensor.js";
import { getEngine } from "../../engine/index.js";
import { withFloats } from "../../engine/scratch.js";
import { add, sigmoidScalar, softmaxRowInPlace, topkIndices } from "../../engine/ops.js";
import { type AnyModule, Module, ModuleList } from "../../nn/module.js";
import { Linear, RMSNorm, type TokenIds, addNormed } from "../../nn/layers.js";
import { type AfmoeConfig, isMoeLayer } from "./config.js";
import { type MoeBlock, type MoeRouting, addServedExperts } from "../../nn/moe.js";
import { type TokenMixer, attendTokenMajor, callOnFilled, sumPairs, tokenMajorContext } from "../../nn/attention.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { DecoderForCausalLM, DecoderModel } from "../causal-lm.js";

/** SwiGLU MLP: down(silu(gate(x)) * up(x)). Used for dense layers, experts and the shared expert. */
export class AfmoeMLP extends SwiGluMLP {
  override readonly className = "AfmoeMLP";
}

export interface RouterInput {
  /** [B, S, H] */
  hidden: Tensor;
  /** [E] or null: used only to select experts */
  expertBias: Tensor | null;
}

export interface RouterOutput {
  /** [T, K] float32, unbiased scores of the selected experts, normalised and scaled */
  topScores: Tensor;
  /** [T, K] expert indices, best first */
  selectedExperts: Int32Array;
}

/** Token-choice top-K router with sigmoid (or softmax) scores. */
export class AfmoeTokenChoiceRouter extends Module<RouterInput, RouterOutput> {
  readonly className = "AfmoeTokenChoiceRouter";

  constructor(private readonly config: AfmoeConfig) {
    super();
    this.addModule("gate", new Linear(config.hiddenSize, config.numExperts));
  }

  get gate(): Linear {
    return this.child("gate");
  }

  async forward({ hidden, expertBias }: RouterInput): Promise<RouterOutput> {
    const c = this.config;
    const E = c.numExperts;
    const K = c.numExpertsPerTok;
    const x = hidden.reshape([hidden.size / c.hiddenSize, c.hiddenSize]);
    const T = x.dim(0);
    const logits = await this.gate.call(x);
    const scores = new Float32Array(logits.data);
    if (c.scoreFunc === "sigmoid") for (let i = 0; i < scores.length; i++) scores[i] = sigmoidScalar(scores[i] as number);
    else for (let t = 0; t < T; t++) softmaxRowInPlace(scores, t * E, E);
    let forSelection = scores;
    if (expertBias) {
      forSelection = new Float32Array(scores.length);
      for (let i = 0; i < scores.length; i++) forSelection[i] = (scores[i] as number) + (expertBias.data[i % E] as number);
    }
    const selected = topkIndices(new Tensor(forSelection, [T, E]), K);
    const top = new Float32Array(T * K);
    for (let t = 0; t < T; t++) {
      let sum = 0;
      for (let k = 0; k < K; k++) {
        const v = scores[t * E + (selected[t * K + k] as number)] as number;
        top[t * K + k] = v;
        sum = Math.fround(sum + v);
      }
      const norm = c.scoreFunc === "sigmoid" && c.routeNorm;
      const denom = Math.fround(sum + 1e-20);
      for (let k = 0; k < K; k++) {
        let v = top[t * K + k] as number;
        if (norm) v = Math.fround(v / denom);
        top[t * K + k] = Math.fround(v * c.routeScale);
      }
    }
    return { topScores: new Tensor(top, [T, K]), selectedExperts: selected };
  }
}

/**
 * What an AFMoE MoE block and its calibration module share: the children (router, experts,
 * shared_experts) and expert_bias, by the checkpoint's names, and the first steps of forward.
 */
export abstract class AfmoeMoEBlock extends Module implements MoeBlock {
  abstract readonly config: AfmoeConfig;

  get numRoutedExperts(): number {
    return this.config.numExperts;
  }
  onRouting(observe: (routing: MoeRouting) => void): () => void {
    return this.router.registerForwardHook((_m, _in, out) => {
      observe(out);
    });
  }
  routedExperts(): readonly AfmoeMLP[] {
    return this.experts.items();
  }

  get router(): AfmoeTokenChoiceRouter {
    return this.child("router");
  }
  get experts(): ModuleList<AfmoeMLP> {
    return this.child("experts");
  }
  get shared_experts(): AfmoeMLP | null {
    return this.hasChild("shared_experts") ? this.child<AfmoeMLP>("shared_experts") : null;
  }
  get expert_bias(): Tensor {
    return this.param("expert_bias");
  }

  /** Route the [B, S, H] input, run the shared expert (zeros without one), and a zero routed sum. */
  protected async routeAndShare(
    hidden: Tensor,
  ): Promise<{ flat: Tensor; T: number; topScores: Tensor; selectedExperts: Int32Array; shared: Tensor; routed: Tensor }> {
    const H = this.config.hiddenSize;
    const flat = hidden.reshape([hidden.size / H, H]);
    const T = flat.dim(0);
    const { topScores, selectedExperts } = await this.router.call({ hidden, expertBias: this.expert_bias });
    const shared = this.shared_experts ? await this.shared_experts.call(flat) : Tensor.zeros([T, H]);
    return { flat, T, topScores, selectedExperts, shared, routed: Tensor.zeros([T, H]) };
  }
}

/** The MoE block: shared expert on every token plus the router-weighted top-K routed experts. */
export class AfmoeMoE extends AfmoeMoEBlock {
  readonly className: string = "AfmoeMoE";

  constructor(readonly config: AfmoeConfig) {
    super();
    this.addModule("router", new AfmoeTokenChoiceRouter(config));
    const experts = Array.from({ length: config.numExperts }, () => new AfmoeMLP(config.hiddenSize, config.moeIntermediateSize));
    this.addModule("experts", new ModuleList(experts));
    if (config.numSharedExperts > 0) {
      this.addModule("shared_experts", new AfmoeMLP(config.hiddenSize, config.moeIntermediateSize * config.numSharedExperts));
    }
    this.declareParam("expert_bias", [config.numExperts]);
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, topScores, selectedExperts, shared, routed } = await this.routeAndShare(hidden);
    await addServedExperts({ flat, topScores, selectedExperts }, this.experts.items(), routed);
    // the routed sum is this call's own array: the block's output is written over it
    return add(shared, routed, routed.data).reshape(hidden.shape);
  }
}

/** Grouped-query attention with q/k RMSNorm, RoPE on sliding layers only, and a sigmoid output gate. */
export class AfmoeAttention extends Module implements TokenMixer {
  readonly className = "AfmoeAttention";
  readonly sliding: boolean;

  constructor(
    readonly config: AfmoeConfig,
    layer: number,
  ) {
    super();
    const { hiddenSize: H, numAttentionHeads: nH, numKeyValueHeads: nKV, headDim: D } = config;
    this.sliding = config.layerTypes[layer] === "sliding_attention";
    this.addModule("q_proj", new Linear(H, nH * D));
    this.addModule("k_proj", new Linear(H, nKV * D));
    this.addModule("v_proj", new Linear(H, nKV * D));
    this.addModule("o_proj", new Linear(nH * D, H));
    this.addModule("gate_proj", new Linear(H, nH * D));
    this.addModule("q_norm", new RMSNorm(D, config.rmsNormEps));
    this.addModule("k_norm", new RMSNorm(D, config.rmsNormEps));
  }

  /** q k^T and p v: 4 D per head and (query, key) pair scored (a sliding layer's within its window) */
  mixingFlops(lengths: readonly number[]): number {
    const c = this.config;
    return 4 * c.numAttentionHeads * c.headDim * sumPairs(lengths, this.sliding ? c.slidingWindow : null);
  }

  private lin(name: string): Linear {
    return this.child(name);
  }
  private norm(name: string): RMSNorm {
    return this.child(name);
  }

  async forward(x: Tensor): Promise<Tensor> {
    const c = this.config;
    const [B, S] = [x.dim(0), x.dim(1)];
    const { numAttentionHeads: nH, numKeyValueHeads: nKV, headDim: D } = c;
    const engine = getEngine();
    const [nq, nk] = [B * S * nH * D, B * S * nKV * D];
    // the projections, q and k after their norms, the head-major copies, the context and its token-major form are used only here: scratch memory
    const sizes = [nq, nk, nk, nq, nq, nk, nq, nk, nk, nq, nq] as const;
    return withFloats(sizes, async ([qp, kp, vp, gp, qn, kn, qh, kh, vh, ctx, o]) => {
      const q = await engine.rmsNorm(
        (await this.lin("q_proj").callInto(x, qp)).reshape([B * S * nH, D]),
        this.norm("q_norm").param("weight"),
        c.rmsNormEps,
        qn,
      );
      const k = await engine.rmsNorm(
        (await this.lin("k_proj").callInto(x, kp)).reshape([B * S * nKV, D]),
        this.norm("k_norm").param("weight"),
        c.rmsNormEps,
        kn,
      );
      const v = await this.lin("v_proj").callInto(x, vp);
      if (this.sliding) {
        applyRopeInPlace(q.data, B, S, nH, D, c.ropeTheta);
        applyRopeInPlace(k.data, B, S, nKV, D, c.ropeTheta);
      }
      const shape = { B, S, nH, nKV, D, window: this.sliding ? c.slidingWindow : null };
      await attendTokenMajor({ q: q.data, k: k.data, v: v.data }, shape, { qh, kh, vh, ctx });
      const gate = await this.lin("gate_proj").callInto(x, gp);
      const context = new Tensor(tokenMajorContext(ctx, shape, o), [B, S, nH * D]);
      return callOnFilled(this.lin("o_proj"), [B, S, nH * D], async (into) => (await engine.sigmoidGate(context, gate, into)).data);
    });
  }
}

/** Decoder layer with sandwich norms around attention and MLP. */
export class AfmoeDecoderLayer extends Module {
  readonly className = "AfmoeDecoderLayer";

  constructor(
    readonly config: AfmoeConfig,
    readonly layerIndex: number,
  ) {
    super();
    const H = config.hiddenSize;
    this.addModule("self_attn", new AfmoeAttention(config, layerIndex));
    this.addModule("mlp", isMoeLayer(config, layerIndex) ? new AfmoeMoE(config) : new AfmoeMLP(H, config.intermediateSize));
    for (const n of ["input_layernorm", "post_attention_layernorm", "pre_mlp_layernorm", "post_mlp_layernorm"]) {
      this.addModule(n, new RMSNorm(H, config.rmsNormEps));
    }
  }

  get mlp(): AnyModule {
    return this.child("mlp");
  }

  private sub(name: string): Module {
    return this.child(name);
  }

  async forward(h: Tensor): Promise<Tensor> {
    const attn = await this.sub("self_attn").call(await this.sub("input_layernorm").call(h));
    const h1 = await addNormed(h, this.child("post_attention_layernorm"), attn);
    const mlp = await this.child<Module>("mlp").call(await this.sub("pre_mlp_layernorm").call(h1));
    return addNormed(h1, this.child("post_mlp_layernorm"), mlp);
  }
}

export class AfmoeModel extends DecoderModel<AfmoeDecoderLayer> {
  override readonly className = "AfmoeModel";

  constructor(readonly config: AfmoeConfig) {
    super(config, (i) => new AfmoeDecoderLayer(config, i));
  }

  /** Scaled embeddings (muP): the input of layer 0. */
  override async embed(ids: TokenIds): Promise<Tensor> {
    const h = await this.embed_tokens.call(ids);
    if (!this.config.mupEnabled) return h;
    const s = Math.fround(Math.sqrt(this.config.hiddenSize));
    for (let i = 0; i < h.size; i++) h.data[i] = (h.data[i] as number) * s;
    return h;
  }
}

export class AfmoeForCausalLM extends DecoderForCausalLM<AfmoeModel> {
  override readonly className = "AfmoeForCausalLM";

  constructor(readonly config: AfmoeConfig) {
    super(new AfmoeModel(config), config);
  }
}

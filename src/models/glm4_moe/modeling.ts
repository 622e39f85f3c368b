/**
 * GLM-4.5 MoE, module by module, under the Hugging Face checkpoint names: the DeepSeek-V3 MoE block
 * (sigmoid scores, a selection-only correction bias, group-limited top-k, routed_scaling_factor,
 * shared experts) and partial-RoPE attention. Exact semantics: transformers' modeling_glm4_moe.py.
 */
import { add, sigmoidScalar } from "../../engine/ops.js";
import { Tensor } from "../../engine/tensor.js";
import { RopeAttention } from "../../nn/attention.js";
import { Linear } from "../../nn/layers.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { Module, ModuleList } from "../../nn/module.js";
import { type MoeBlock, type MoeRouting, addServedExperts } from "../../nn/moe.js";
import type { Glm4MoeBlockConfig, Glm4MoeConfig } from "./config.js";
import { DecoderForCausalLM, DecoderModel, PreNormDecoderLayer } from "../causal-lm.js";

export class Glm4MoeMLP extends SwiGluMLP {
  override readonly className: string = "Glm4MoeMLP";
}

export interface Glm4MoeRouting extends MoeRouting {
  /** [T, K] combine weights: the selected experts' sigmoid scores, renormalised, times routed_scaling_factor */
  readonly topScores: Tensor;
}

/**
 * `Glm4MoeTopkRouter`: a Linear [E, H] (so it is named in `ignore` like every router) holding also
 * `e_score_correction_bias` [E], which only shifts which experts are chosen.
 */
export class Glm4MoeTopkRouter extends Linear {
  override readonly className: string = "Glm4MoeTopkRouter";

  constructor(readonly config: Glm4MoeBlockConfig) {
    super(config.hiddenSize, config.numExperts);
    this.declareParam("e_score_correction_bias", [config.numExperts]);
  }

  /** The routing of logits [T, E]: sigmoid, bias for choosing, the topk_group best groups (by their two best choices), top-K within them. */
  route(logits: Tensor): Glm4MoeRouting {
    const c = this.config;
    const [T, E, K, G] = [logits.dim(0), c.numExperts, c.numExpertsPerTok, c.nGroup];
    const per = E / G;
    const bias = this.param("e_score_correction_bias").data;
    const selected = new Int32Array(T * K);
    const top = new Float32Array(T * K);
    const scores = new Float32Array(E);
    const choice = new Float32Array(E);
    for (let t = 0; t < T; t++) {
      for (let e = 0; e < E; e++) {
        scores[e] = sigmoidScalar(logits.data[t * E + e] as number);
        choice[e] = Math.fround((scores[e] as number) + (bias[e] as number));
      }
      // group score: the sum of its two largest choice values
      const groupScore = Array.from({ length: G }, (_, g) => {
        const vals = Array.from(choice.subarray(g * per, (g + 1) * per)).sort((a, b) => b - a);
        return Math.fround((vals[0] as number) + (vals[1] as number));
      });
      const keep = new Set(
        groupScore
          .map((s, g) => [s, g] as const)
          .sort((a, b) => b[0] - a[0] || a[1] - b[1])
          .slice(0, c.topkGroup)
          .map(([, g]) => g),
      );
      const masked = Array.from(choice, (v, e) => [keep.has(Math.floor(e / per)) ? v : 0, e] as const);
      masked.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      let sum = 0;
      for (let k = 0; k < K; k++) {
        const e = (masked[k] as readonly [number, number])[1];
        selected[t * K + k] = e;
        top[t * K + k] = scores[e] as number;
        sum += scores[e] as number;
      }
      for (let k = 0; k < K; k++) {
        const w = c.normTopkProb ? Math.fround((top[t * K + k] as number) / Math.fround(sum + 1e-20)) : (top[t * K + k] as number);
        top[t * K + k] = Math.fround(w * c.routedScalingFactor);
      }
    }
    return { topScores: new Tensor(top, [T, K]), selectedExperts: selected };
  }
}

/** What the MoE block and its calibration module share: the router `gate`, the `experts` and the `shared_experts`. */
export abstract class Glm4MoeBlockBase extends Module<Tensor, Tensor> implements MoeBlock {
  abstract readonly config: Glm4MoeBlockConfig;

  get gate(): Glm4MoeTopkRouter {
    return this.child("gate");
  }
  get experts(): ModuleList<Glm4MoeMLP> {
    return this.child("experts");
  }
  get shared_experts(): Glm4MoeMLP | null {
    return this.hasChild("shared_experts") ? this.child<Glm4MoeMLP>("shared_experts") : null;
  }
  get numRoutedExperts(): number {
    return this.config.numExperts;
  }
  routedExperts(): readonly Glm4MoeMLP[] {
    return this.experts.items();
  }
  onRouting(observe: (routing: MoeRouting) => void): () => void {
    return this.gate.registerForwardHook((_m, _x, logits: Tensor) => {
      observe(this.gate.route(logits));
    });
  }

  /** The [B, S, H] input as [T, H], its routing, the shared experts' output (zeros without) and a zero routed sum. */
  protected async routeAndShare(hidden: Tensor): Promise<{ flat: Tensor; routing: Glm4MoeRouting; shared: Tensor; routed: Tensor }> {
    const H = this.config.hiddenSize;
    const flat = hidden.reshape([hidden.size / H, H]);
    const routing = this.gate.route(await this.gate.call(flat));
    const shared = this.shared_experts ? await this.shared_experts.call(flat) : Tensor.zeros([flat.dim(0), H]);
    return { flat, routing, shared, routed: Tensor.zeros([flat.dim(0), H]) };
  }
}

/** The classes a GLM-style block is made of. */
export interface Glm4MoeParts {
  router(config: Glm4MoeBlockConfig): Glm4MoeTopkRouter;
  mlp(hidden: number, intermediate: number): Glm4MoeMLP;
}

/** `Glm4MoeMoE`: the routed experts weighted by the router, plus the shared experts on every token. */
export class Glm4MoeMoE extends Glm4MoeBlockBase {
  readonly className: string = "Glm4MoeMoE";

  /** `parts`: the router and MLP classes (a family that reuses this block names its own). */
  constructor(
    readonly config: Glm4MoeBlockConfig,
    parts: Glm4MoeParts = { router: (c) => new Glm4MoeTopkRouter(c), mlp: (h, i) => new Glm4MoeMLP(h, i) },
  ) {
    super();
    this.addModule("gate", parts.router(config));
    this.addModule(
      "experts",
      new ModuleList(Array.from({ length: config.numExperts }, () => parts.mlp(config.hiddenSize, config.moeIntermediateSize))),
    );
    if (config.numSharedExperts > 0)
      this.addModule("shared_experts", parts.mlp(config.hiddenSize, config.moeIntermediateSize * config.numSharedExperts));
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, shared, routed } = await this.routeAndShare(hidden);
    await addServedExperts({ flat, topScores: routing.topScores, selectedExperts: routing.selectedExperts }, this.experts.items(), routed);
    return add(routed, shared).reshape(hidden.shape);
  }
}

/** Grouped-query attention: optional q/k norm, RoPE on the first rotaryDim dims of each head, q/k/v biases when attention_bias. */
export class Glm4MoeAttention extends RopeAttention {
  override readonly className = "Glm4MoeAttention";

  constructor(config: Glm4MoeConfig) {
    super({
      hidden: config.hiddenSize,
      heads: config.numAttentionHeads,
      kvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      ropeTheta: config.ropeTheta,
      qkNormEps: config.useQkNorm ? config.rmsNormEps : null,
      window: null,
      rotaryDim: config.rotaryDim,
      qkvBias: config.attentionBias,
    });
  }
}

/** Pre-norm decoder layer; the first first_k_dense_replace layers have a dense MLP. */
export class Glm4MoeDecoderLayer extends PreNormDecoderLayer {
  override readonly className = "Glm4MoeDecoderLayer";

  constructor(
    readonly config: Glm4MoeConfig,
    readonly layerIndex: number,
  ) {
    const mlp =
      layerIndex >= config.firstKDenseReplace ? new Glm4MoeMoE(config) : new Glm4MoeMLP(config.hiddenSize, config.intermediateSize);
    super(config, new Glm4MoeAttention(config), "mlp", mlp);
  }
}

export class Glm4MoeModel extends DecoderModel<Glm4MoeDecoderLayer> {
  override readonly className = "Glm4MoeModel";

  constructor(readonly config: Glm4MoeConfig) {
    super(config, (i) => new Glm4MoeDecoderLayer(config, i));
  }
}

export class Glm4MoeForCausalLM extends DecoderForCausalLM<Glm4MoeModel> {
  override readonly className = "Glm4MoeForCausalLM";

  constructor(readonly config: Glm4MoeConfig) {
    super(new Glm4MoeModel(config), config);
  }
}

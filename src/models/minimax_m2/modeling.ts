/**
 * MiniMax-M2, module by module, under the checkpoint names: GQA attention whose q/k RMSNorm runs
 * over all heads at once before partial rotate-half RoPE, and in every layer a MoE block
 * (`block_sparse_moe`, Mixtral's expert names w1 / w3 / w2) routed by sigmoid scores with a
 * selection-only correction bias, always renormalised. Exact semantics: ../shared/spec/minimax_m2.md.
 */
import { sigmoidScalar, topkIndices } from "../../engine/ops.js";
import { Tensor } from "../../engine/tensor.js";
import { RopeAttention } from "../../nn/attention.js";
import { Linear } from "../../nn/layers.js";
import { Module, ModuleList } from "../../nn/module.js";
import { type MoeBlock, type MoeRouting, addServedExperts } from "../../nn/moe.js";
import { DecoderForCausalLM, DecoderModel, PreNormDecoderLayer } from "../causal-lm.js";
import { MixtralBlockSparseTop2MLP } from "../mixtral/modeling.js";
import type { MiniMaxM2Config } from "./config.js";

/** An expert: w2(silu(w1(x)) * w3(x)), Mixtral's. */
export class MiniMaxM2MLP extends MixtralBlockSparseTop2MLP {
  override readonly className = "MiniMaxM2MLP";
}

export interface MiniMaxM2Routing extends MoeRouting {
  /** [T, K] combine weights: the selected experts' sigmoid scores divided by their sum */
  readonly topScores: Tensor;
}

/** What the block and its calibration module share: router `gate`, `experts` and the block's `e_score_correction_bias`. */
export abstract class MiniMaxM2BlockBase extends Module<Tensor, Tensor> implements MoeBlock {
  abstract readonly config: MiniMaxM2Config;

  get gate(): Linear {
    return this.child("gate");
  }
  get experts(): ModuleList<MiniMaxM2MLP> {
    return this.child("experts");
  }
  get numRoutedExperts(): number {
    return this.config.numExperts;
  }
  routedExperts(): readonly MiniMaxM2MLP[] {
    return this.experts.items();
  }
  onRouting(observe: (routing: MoeRouting) => void): () => void {
    return this.gate.registerForwardHook((_m, _x, logits: Tensor) => {
      observe(this.route(logits));
    });
  }

  /** The routing of router logits [T, E]: sigmoid; top-K of score + bias; weights the unbiased scores over their sum. */
  route(logits: Tensor): MiniMaxM2Routing {
    const c = this.config;
    const [T, E, K] = [logits.dim(0), c.numExperts, c.numExpertsPerTok];
    const bias = c.useRoutingBias ? this.param("e_score_correction_bias").data : null;
    const scores = logits.data.map((v) => sigmoidScalar(v));
    const choice = bias ? scores.map((v, i) => Math.fround(v + (bias[i % E] as number))) : scores;
    const selected = topkIndices(new Tensor(choice, [T, E]), K);
    const top = new Float32Array(T * K);
    for (let t = 0; t < T; t++) {
      let sum = 0;
      for (let k = 0; k < K; k++) {
        const v = scores[t * E + (selected[t * K + k] as number)] as number;
        top[t * K + k] = v;
        sum = Math.fround(sum + v);
      }
      for (let k = 0; k < K; k++) top[t * K + k] = Math.fround((top[t * K + k] as number) / sum);
    }
    return { topScores: new Tensor(top, [T, K]), selectedExperts: selected };
  }

  /** The [B, S, H] input as [T, H], its routing and a zero routed sum. */
  protected async routeInput(hidden: Tensor): Promise<{ flat: Tensor; routing: MiniMaxM2Routing; routed: Tensor }> {
    const H = this.config.hiddenSize;
    const flat = hidden.reshape([hidden.size / H, H]);
    const routing = this.route(await this.gate.call(flat));
    return { flat, routing, routed: Tensor.zeros([flat.dim(0), H]) };
  }
}

/** `MiniMaxM2SparseMoeBlock`: every expert on its routed tokens, weighted by the router. */
export class MiniMaxM2SparseMoeBlock extends MiniMaxM2BlockBase {
  readonly className = "MiniMaxM2SparseMoeBlock";

  constructor(readonly config: MiniMaxM2Config) {
    super();
    this.addModule("gate", new Linear(config.hiddenSize, config.numExperts));
    this.addModule(
      "experts",
      new ModuleList(Array.from({ length: config.numExperts }, () => new MiniMaxM2MLP(config.hiddenSize, config.intermediateSize))),
    );
    if (config.useRoutingBias) this.declareParam("e_score_correction_bias", [config.numExperts]);
  }

  async forward(hidden: Tensor): Promise<Tensor> {
    const { flat, routing, routed } = await this.routeInput(hidden);
    await addServedExperts({ flat, topScores: routing.topScores, selectedExperts: routing.selectedExperts }, this.experts.items(), routed);
    return routed.reshape(hidden.shape);
  }
}

/** GQA attention, q/k RMSNorm over all heads before RoPE on the first rotary_dim dims of each head; no biases. */
export class MiniMaxM2Attention extends RopeAttention {
  override readonly className = "MiniMaxM2Attention";

  constructor(config: MiniMaxM2Config) {
    super({
      hidden: config.hiddenSize,
      heads: config.numAttentionHeads,
      kvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      ropeTheta: config.ropeTheta,
      qkNormEps: config.rmsNormEps,
      qkNormAllHeads: true,
      window: null,
      rotaryDim: config.rotaryDim,
    });
  }
}

/** Pre-norm decoder layer; every layer has the MoE block. */
export class MiniMaxM2DecoderLayer extends PreNormDecoderLayer {
  override readonly className = "MiniMaxM2DecoderLayer";

  constructor(readonly config: MiniMaxM2Config) {
    super(config, new MiniMaxM2Attention(config), "block_sparse_moe", new MiniMaxM2SparseMoeBlock(config));
  }
}

export class MiniMaxM2Model extends DecoderModel<MiniMaxM2DecoderLayer> {
  override readonly className = "MiniMaxM2Model";

  constructor(readonly config: MiniMaxM2Config) {
    super(config, () => new MiniMaxM2DecoderLayer(config));
  }
}

export class MiniMaxM2ForCausalLM extends DecoderForCausalLM<MiniMaxM2Model> {
  override readonly className = "MiniMaxM2ForCausalLM";

  constructor(readonly config: MiniMaxM2Config) {
    super(new MiniMaxM2Model(config), config);
  }
}

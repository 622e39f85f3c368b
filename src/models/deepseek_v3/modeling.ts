/**
 * DeepSeek-V3 / Kimi-K2, module by module, under the Hugging Face checkpoint names: multi-head
 * latent attention (MLA) with YaRN RoPE, and GLM-4.5's MoE block (the same block: sigmoid router
 * with a selection-only correction bias, group-limited top-k, shared experts). Exact semantics:
 * ../shared/spec/deepseek_v3.md (transformers' modeling_deepseek_v3.py, vLLM's deepseek_v2.py).
 */
import { Tensor } from "../../engine/tensor.js";
import { getEngine } from "../../engine/index.js";
import { type TokenMixer, causalAttention, sumPairs, tokenMajorContext } from "../../nn/attention.js";
import { Linear, RMSNorm } from "../../nn/layers.js";
import { Module } from "../../nn/module.js";
import { ropeFrequencies, ropeTables, rotateAt, yarnMscale } from "../../nn/rope.js";
import { DecoderForCausalLM, DecoderModel, PreNormDecoderLayer } from "../causal-lm.js";
import type { Glm4MoeBlockConfig } from "../glm4_moe/config.js";
import { Glm4MoeMLP, Glm4MoeMoE, Glm4MoeTopkRouter } from "../glm4_moe/modeling.js";
import type { DeepseekV3Config } from "./config.js";

export class DeepseekV3MLP extends Glm4MoeMLP {
  override readonly className = "DeepseekV3MLP";
}

export class DeepseekV3TopkRouter extends Glm4MoeTopkRouter {
  override readonly className = "DeepseekV3TopkRouter";
}

/** `DeepseekV3MoE`: GLM-4.5's block under DeepSeek's class names. */
export class DeepseekV3MoE extends Glm4MoeMoE {
  override readonly className = "DeepseekV3MoE";

  constructor(config: Glm4MoeBlockConfig) {
    super(config, { router: (c) => new DeepseekV3TopkRouter(c), mlp: (h, i) => new DeepseekV3MLP(h, i) });
  }
}

/**
 * Multi-head latent attention: queries through a low-rank bottleneck (or `q_proj`), keys and
 * values from one compressed latent plus one rope key shared by all heads; scores scaled by
 * (dn + dr)^-0.5 times YaRN's mscale squared.
 */
export class DeepseekV3Attention extends Module<Tensor, Tensor> implements TokenMixer {
  readonly className = "DeepseekV3Attention";
  private readonly rope: { invFreq: Float32Array; attentionFactor: number };
  readonly softmaxScale: number;

  constructor(readonly config: DeepseekV3Config) {
    super();
    const c = config;
    const [H, nH, dq] = [c.hiddenSize, c.numAttentionHeads, c.qkNopeHeadDim + c.qkRopeHeadDim];
    if (c.qLoraRank === null) this.addModule("q_proj", new Linear(H, nH * dq));
    else {
      this.addModule("q_a_proj", new Linear(H, c.qLoraRank));
      this.addModule("q_a_layernorm", new RMSNorm(c.qLoraRank, c.rmsNormEps));
      this.addModule("q_b_proj", new Linear(c.qLoraRank, nH * dq));
    }
    this.addModule("kv_a_proj_with_mqa", new Linear(H, c.kvLoraRank + c.qkRopeHeadDim));
    this.addModule("kv_a_layernorm", new RMSNorm(c.kvLoraRank, c.rmsNormEps));
    this.addModule("kv_b_proj", new Linear(c.kvLoraRank, nH * (c.qkNopeHeadDim + c.vHeadDim)));
    this.addModule("o_proj", new Linear(nH * c.vHeadDim, H));
    this.rope = ropeFrequencies(c.qkRopeHeadDim, c.ropeTheta, c.yarn);
    const m = c.yarn?.mscaleAllDim ? yarnMscale(c.yarn.factor, c.yarn.mscaleAllDim) : 1;
    this.softmaxScale = dq ** -0.5 * m * m;
  }

  private lin(n: string): Linear {
    return this.child(n);
  }

  /** q k^T over dn + dr dims and p v over dv: 2 (dq + dv) per head and (query, key) pair scored */
  mixingFlops(lengths: readonly number[]): number {
    const c = this.config;
    return 2 * c.numAttentionHeads * (c.qkNopeHeadDim + c.qkRopeHeadDim + c.vHeadDim) * sumPairs(lengths, null);
  }

  /** [B, S, nH * dq] queries. */
  private async queries(x: Tensor): Promise<Tensor> {
    if (this.config.qLoraRank === null) return this.lin("q_proj").call(x);
    const qa = await this.lin("q_a_proj").call(x);
    return this.lin("q_b_proj").call(await this.child<RMSNorm>("q_a_layernorm").call(qa));
  }

  async forward(x: Tensor): Promise<Tensor> {
    const c = this.config;
    const [B, S] = [x.dim(0), x.dim(1)];
    const [nH, dn, dr, dv, rkv] = [c.numAttentionHeads, c.qkNopeHeadDim, c.qkRopeHeadDim, c.vHeadDim, c.kvLoraRank];
    const dq = dn + dr;
    const q = (await this.queries(x)).data;
    const ckv = (await this.lin("kv_a_proj_with_mqa").call(x)).data;
    const latent = new Float32Array(B * S * rkv);
    for (let t = 0; t < B * S; t++) latent.set(ckv.subarray(t * (rkv + dr), t * (rkv + dr) + rkv), t * rkv);
    const norm = this.child<RMSNorm>("kv_a_layernorm");
    const kv = (
      await this.lin("kv_b_proj").call(await getEngine().rmsNorm(new Tensor(latent, [B, S, rkv]), norm.param("weight"), norm.eps))
    ).data;
    const tables = ropeTables(this.rope.invFreq, S, this.rope.attentionFactor);
    // head-major q and k [B * nH, S, dq] (nope part, then the rotated rope part) and v [B * nH, S, dv]
    const qh = new Float32Array(B * nH * S * dq);
    const kh = new Float32Array(B * nH * S * dq);
    const vh = new Float32Array(B * nH * S * dv);
    const kPe = new Float32Array(dr);
    for (let b = 0; b < B; b++) {
      for (let s = 0; s < S; s++) {
        const t = b * S + s;
        kPe.set(ckv.subarray(t * (rkv + dr) + rkv, (t + 1) * (rkv + dr)));
        rotateAt(kPe, 0, s, tables, dr / 2, c.ropeInterleave);
        for (let h = 0; h < nH; h++) {
          const row = ((b * nH + h) * S + s) * dq;
          qh.set(q.subarray((t * nH + h) * dq, (t * nH + h + 1) * dq), row);
          rotateAt(qh, row + dn, s, tables, dr / 2, c.ropeInterleave);
          const src = (t * nH + h) * (dn + dv);
          kh.set(kv.subarray(src, src + dn), row);
          kh.set(kPe, row + dn);
          vh.set(kv.subarray(src + dn, src + dn + dv), ((b * nH + h) * S + s) * dv);
        }
      }
    }
    const shape = { B, S, nH, nKV: nH, D: dq, Dv: dv, window: null, scale: this.softmaxScale };
    const ctx = await causalAttention(qh, kh, vh, shape);
    return this.lin("o_proj").call(new Tensor(tokenMajorContext(ctx, shape), [B, S, nH * dv]));
  }
}

/** Pre-norm decoder layer; the first first_k_dense_replace layers have a dense MLP. */
export class DeepseekV3DecoderLayer extends PreNormDecoderLayer {
  override readonly className = "DeepseekV3DecoderLayer";

  constructor(
    readonly config: DeepseekV3Config,
    readonly layerIndex: number,
  ) {
    const mlp =
      layerIndex >= config.firstKDenseReplace ? new DeepseekV3MoE(config) : new DeepseekV3MLP(config.hiddenSize, config.intermediateSize);
    super(config, new DeepseekV3Attention(config), "mlp", mlp);
  }
}

export class DeepseekV3Model extends DecoderModel<DeepseekV3DecoderLayer> {
  override readonly className = "DeepseekV3Model";

  constructor(readonly config: DeepseekV3Config) {
    super(config, (i) => new DeepseekV3DecoderLayer(config, i));
  }
}

export class DeepseekV3ForCausalLM extends DecoderForCausalLM<DeepseekV3Model> {
  override readonly className = "DeepseekV3ForCausalLM";

  constructor(readonly config: DeepseekV3Config) {
    super(new DeepseekV3Model(config), config);
  }
}

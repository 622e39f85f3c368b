/**
 * Qwen3-Next and Qwen3.5-MoE (text), module by module, under the checkpoint names: zero-centred
 * RMSNorms, gated full attention, the Gated DeltaNet token mixer (gated-deltanet.ts) and a
 * softmax-routed MoE block with a sigmoid-gated shared expert. Exact semantics:
 * ../shared/spec/qwen3_next.md.
 */
import { add, sigmoidScalar } from "../../engine/ops.js";
import { applyRopeInPlace } from "../../nn/rope.js";
import { Tensor } from "../../engine/tensor.js";
import { getEngine } from "../../engine/index.js";
import { type TokenMixer, attendTokenMajor, sumPairs, tokenMajorContext } from "../../nn/attention.js";
import { Linear, RMSNorm } from "../../nn/layers.js";
import { SwiGluMLP } from "../../nn/mlp.js";
import { Module } from "../../nn/module.js";
import { SoftmaxMoeBlock, type SoftmaxMoeShape } from "../../nn/softmax-moe.js";
import { DecoderForCausalLM, DecoderModel } from "../causal-lm.js";
import type { Qwen3NextConfig } from "./config.js";
import { Qwen3NextGatedDeltaNet } from "./gated-deltanet.js";

/** RMSNorm with the weight stored as an offset from 1: x * rsqrt(mean(x^2) + eps) * (1 + w). */
export class Qwen3NextRMSNorm extends RMSNorm {
  override readonly className = "Qwen3NextRMSNorm";

  override forwardInto(x: Tensor, into?: Float32Array): Promise<Tensor> {
    return getEngine().rmsNorm(
      x,
      new Tensor(
        this.param("weight").data.map((w) => 1 + w),
        [this.dim],
      ),
      this.eps,
      into,
    );
  }
}

export class Qwen3NextMLP extends SwiGluMLP {
  override readonly className = "Qwen3NextMLP";
}

/** The shape of the block's routing: softmax over all experts, top-K, renormalised where the config says. */
export function qwen3NextShape(c: Qwen3NextConfig): SoftmaxMoeShape {
  return { hidden: c.hiddenSize, experts: c.numExperts, topK: c.numExpertsPerTok, renormalize: c.normTopkProb };
}

/** sigmoid(shared_expert_gate(x)) * shared_expert(x) on every token ([T, H] in and out). */
export async function gatedSharedExpert(block: Module<Tensor, Tensor>, flat: Tensor): Promise<Tensor | null> {
  if (!block.hasChild("shared_expert")) return null;
  const y = await block.child<Qwen3NextMLP>("shared_expert").call(flat);
  const g = (await block.child<Linear>("shared_expert_gate").call(flat)).data;
  const H = flat.dim(-1);
  for (let t = 0; t < g.length; t++) {
    const s = sigmoidScalar(g[t] as number);
    for (let j = 0; j < H; j++) y.data[t * H + j] = (y.data[t * H + j] as number) * s;
  }
  return y;
}

/** `Qwen3NextSparseMoeBlock`: routed experts weighted by the router, plus the gated shared expert. */
export class Qwen3NextSparseMoeBlock extends SoftmaxMoeBlock<Qwen3NextMLP> {
  readonly className = "Qwen3NextSparseMoeBlock";
  readonly shape: SoftmaxMoeShape;

  constructor(readonly config: Qwen3NextConfig) {
    super();
    this.shape = qwen3NextShape(config);
    this.declareChildren(() => new Qwen3NextMLP(config.hiddenSize, config.moeIntermediateSize));
    if (config.sharedExpertIntermediateSize > 0) {
      this.addModule("shared_expert", new Qwen3NextMLP(config.hiddenSize, config.sharedExpertIntermediateSize));
      this.addModule("shared_expert_gate", new Linear(config.hiddenSize, 1));
    }
  }

  override async forward(hidden: Tensor): Promise<Tensor> {
    const routed = await super.forward(hidden);
    const shared = await gatedSharedExpert(this, hidden.reshape([hidden.size / this.config.hiddenSize, this.config.hiddenSize]));
    return shared ? add(routed, shared.reshape(hidden.shape)) : routed;
  }
}

/**
 * Gated full attention: `q_proj` holds each head's query and output gate (interleaved per head),
 * zero-centred q/k norms per head, RoPE on the first rotaryDim dims, the output gated by
 * sigmoid(gate) before `o_proj`.
 */
export class Qwen3NextAttention extends Module<Tensor, Tensor> implements TokenMixer {
  readonly className = "Qwen3NextAttention";

  constructor(readonly config: Qwen3NextConfig) {
    super();
    const { hiddenSize: H, numAttentionHeads: nH, numKeyValueHeads: nKV, headDim: D } = config;
    const bias = { bias: config.attentionBias };
    this.addModule("q_proj", new Linear(H, nH * 2 * D, bias));
    this.addModule("k_proj", new Linear(H, nKV * D, bias));
    this.addModule("v_proj", new Linear(H, nKV * D, bias));
    this.addModule("o_proj", new Linear(nH * D, H, bias));
    this.addModule("q_norm", new Qwen3NextRMSNorm(D, config.rmsNormEps));
    this.addModule("k_norm", new Qwen3NextRMSNorm(D, config.rmsNormEps));
  }

  /** q k^T and p v: 4 D per head and (query, key) pair scored */
  mixingFlops(lengths: readonly number[]): number {
    return 4 * this.config.numAttentionHeads * this.config.headDim * sumPairs(lengths, null);
  }

  async forward(x: Tensor): Promise<Tensor> {
    const { numAttentionHeads: nH, numKeyValueHeads: nKV, headDim: D } = this.config;
    const [B, S] = [x.dim(0), x.dim(1)];
    const lin = (n: string): Linear => this.child(n);
    const y = (await lin("q_proj").call(x)).data;
    const query = new Float32Array(B * S * nH * D);
    const gate = new Float32Array(B * S * nH * D);
    for (let i = 0; i < B * S * nH; i++) {
      query.set(y.subarray(i * 2 * D, i * 2 * D + D), i * D);
      gate.set(y.subarray(i * 2 * D + D, (i + 1) * 2 * D), i * D);
    }
    const norm = async (t: Float32Array, n: string): Promise<Float32Array> =>
      (await this.child<Qwen3NextRMSNorm>(n).call(new Tensor(t, [t.length / D, D]))).data;
    const q = await norm(query, "q_norm");
    const k = await norm((await lin("k_proj").call(x)).data, "k_norm");
    const v = (await lin("v_proj").call(x)).data;
    applyRopeInPlace(q, B, S, nH, D, this.config.ropeTheta, this.config.rotaryDim);
    applyRopeInPlace(k, B, S, nKV, D, this.config.ropeTheta, this.config.rotaryDim);
    const shape = { B, S, nH, nKV, D, window: null };
    const ctx = await attendTokenMajor({ q, k, v }, shape);
    const o = new Tensor(tokenMajorContext(ctx, shape), [B, S, nH * D]);
    return lin("o_proj").call(await getEngine().sigmoidGate(o, new Tensor(gate, o.shape)));
  }
}

/** Pre-norm decoder layer: linear or full attention per layer_types, then the MoE block (or a dense MLP). */
export class Qwen3NextDecoderLayer extends Module<Tensor, Tensor> {
  readonly className = "Qwen3NextDecoderLayer";
  private readonly mixer: "linear_attn" | "self_attn";

  constructor(
    readonly config: Qwen3NextConfig,
    readonly layerIndex: number,
  ) {
    super();
    const linear = config.layerTypes[layerIndex] === "linear_attention";
    this.mixer = linear ? "linear_attn" : "self_attn";
    this.addModule(this.mixer, linear ? new Qwen3NextGatedDeltaNet(config) : new Qwen3NextAttention(config));
    const dense = config.denseLayers.includes(layerIndex);
    this.addModule("mlp", dense ? new Qwen3NextMLP(config.hiddenSize, config.intermediateSize) : new Qwen3NextSparseMoeBlock(config));
    this.addModule("input_layernorm", new Qwen3NextRMSNorm(config.hiddenSize, config.rmsNormEps));
    this.addModule("post_attention_layernorm", new Qwen3NextRMSNorm(config.hiddenSize, config.rmsNormEps));
  }

  async forward(h: Tensor): Promise<Tensor> {
    const sub = (n: string): Module<Tensor, Tensor> => this.child(n);
    const h1 = add(h, await sub(this.mixer).call(await sub("input_layernorm").call(h)));
    return add(h1, await sub("mlp").call(await sub("post_attention_layernorm").call(h1)));
  }
}

export class Qwen3NextModel extends DecoderModel<Qwen3NextDecoderLayer> {
  override readonly className = "Qwen3NextModel";

  constructor(readonly config: Qwen3NextConfig) {
    super(config, (i) => new Qwen3NextDecoderLayer(config, i));
    // the final norm is zero-centred too
    this.addModule("norm", new Qwen3NextRMSNorm(config.hiddenSize, config.rmsNormEps));
  }
}

export class Qwen3NextForCausalLM extends DecoderForCausalLM<Qwen3NextModel> {
  override readonly className = "Qwen3NextForCausalLM";

  constructor(readonly config: Qwen3NextConfig) {
    super(new Qwen3NextModel(config), config);
  }
}

/**
 * The Gated DeltaNet token mixer of Qwen3-Next and Qwen3.5 (`linear_attn`): input projections, a
 * causal depthwise convolution with SiLU, l2-normalised queries and keys, a per-head gated delta
 * rule over a [dk, dv] state, a gated RMSNorm per value head and `out_proj`
 * (../shared/spec/qwen3_next.md, "Gated DeltaNet layer"). The recurrence runs token by token in
 * typed arrays (about 4 dk dv operations per value head and token: a small part of a layer).
 */
import { sigmoidScalar } from "../../engine/ops.js";
import { Tensor } from "../../engine/tensor.js";
import type { TokenMixer } from "../../nn/attention.js";
import { Linear } from "../../nn/layers.js";
import { Module } from "../../nn/module.js";
import type { Qwen3NextConfig } from "./config.js";

/** One sequence's projections in the conv's channel order: X [S, C] (q heads, k heads, v heads), z [S, nV dv], b and a [S, nV]. */
interface Projected {
  X: Float32Array;
  z: Float32Array;
  b: Float32Array;
  a: Float32Array;
}

export class Qwen3NextGatedDeltaNet extends Module<Tensor, Tensor> implements TokenMixer {
  readonly className = "Qwen3NextGatedDeltaNet";
  private readonly dims: { nK: number; nV: number; dk: number; dv: number; r: number; C: number; Kc: number };

  constructor(readonly config: Qwen3NextConfig) {
    super();
    const { numKeyHeads: nK, numValueHeads: nV, keyHeadDim: dk, valueHeadDim: dv, convKernel: Kc } = config.linear;
    const H = config.hiddenSize;
    const C = 2 * nK * dk + nV * dv;
    this.dims = { nK, nV, dk, dv, r: nV / nK, C, Kc };
    if (config.modelType === "qwen3_next") {
      this.addModule("in_proj_qkvz", new Linear(H, 2 * nK * dk + 2 * nV * dv));
      this.addModule("in_proj_ba", new Linear(H, 2 * nV));
    } else {
      this.addModule("in_proj_qkv", new Linear(H, C));
      this.addModule("in_proj_z", new Linear(H, nV * dv));
      this.addModule("in_proj_b", new Linear(H, nV));
      this.addModule("in_proj_a", new Linear(H, nV));
    }
    this.declareParam("conv1d.weight", [C, 1, Kc]);
    this.declareParam("A_log", [nV]);
    this.declareParam("dt_bias", [nV]);
    this.declareParam("norm.weight", [dv]);
    this.addModule("out_proj", new Linear(nV * dv, H));
  }

  private lin(n: string): Linear {
    return this.child(n);
  }

  /**
   * Per token: the conv (2 Kc C), and per value head the decay, S^T k, the outer product and S^T q
   * (4 dk dv, plus dk dv for the decay): linear in the length.
   */
  mixingFlops(tokens: number): number {
    const { nV, dk, dv, C, Kc } = this.dims;
    return tokens * (2 * Kc * C + nV * 5 * dk * dv);
  }

  /** Qwen3-Next's head-group-interleaved projections, reordered per token into the conv's channel order. */
  private async projectInterleaved(x: Tensor, T: number): Promise<Projected> {
    const { nK, nV, dk, dv, r, C } = this.dims;
    const P = (await this.lin("in_proj_qkvz").call(x)).data;
    const BA = (await this.lin("in_proj_ba").call(x)).data;
    const per = 2 * dk + 2 * r * dv;
    const out: Projected = {
      X: new Float32Array(T * C),
      z: new Float32Array(T * nV * dv),
      b: new Float32Array(T * nV),
      a: new Float32Array(T * nV),
    };
    for (let t = 0; t < T; t++)
      for (let g = 0; g < nK; g++) {
        const src = t * nK * per + g * per;
        out.X.set(P.subarray(src, src + dk), t * C + g * dk);
        out.X.set(P.subarray(src + dk, src + 2 * dk), t * C + nK * dk + g * dk);
        out.X.set(P.subarray(src + 2 * dk, src + 2 * dk + r * dv), t * C + 2 * nK * dk + g * r * dv);
        out.z.set(P.subarray(src + 2 * dk + r * dv, src + per), t * nV * dv + g * r * dv);
        for (let j = 0; j < r; j++) {
          out.b[t * nV + g * r + j] = BA[t * nK * 2 * r + g * 2 * r + j] as number;
          out.a[t * nV + g * r + j] = BA[t * nK * 2 * r + g * 2 * r + r + j] as number;
        }
      }
    return out;
  }

  private async project(x: Tensor, T: number): Promise<Projected> {
    if (this.config.modelType === "qwen3_next") return this.projectInterleaved(x, T);
    const X = (await this.lin("in_proj_qkv").call(x)).data;
    const z = (await this.lin("in_proj_z").call(x)).data;
    const b = (await this.lin("in_proj_b").call(x)).data;
    return { X, z, b, a: (await this.lin("in_proj_a").call(x)).data };
  }

  /** Causal depthwise conv + SiLU over one sequence's X [S, C] (zeros before the first token). */
  private conv(X: Float32Array, S: number, off: number): Float32Array {
    const { C, Kc } = this.dims;
    const w = this.param("conv1d.weight").data;
    const Y = new Float32Array(S * C);
    for (let t = 0; t < S; t++)
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let j = 0; j < Kc; j++) {
          const tt = t - (Kc - 1) + j;
          if (tt >= 0) s += (w[c * Kc + j] as number) * (X[(off + tt) * C + c] as number);
        }
        Y[t * C + c] = s * sigmoidScalar(s);
      }
    return Y;
  }

  /** l2-normalise each head of `n` heads of `d` at `at` in every row of Y (eps inside the root), times `scale`. */
  private l2(Y: Float32Array, S: number, at: number, n: number, d: number, scale: number): void {
    const { C } = this.dims;
    for (let t = 0; t < S; t++)
      for (let h = 0; h < n; h++) {
        const base = t * C + at + h * d;
        let ss = 0;
        for (let i = 0; i < d; i++) ss += (Y[base + i] as number) ** 2;
        const f = scale / Math.sqrt(ss + 1e-6);
        for (let i = 0; i < d; i++) Y[base + i] = (Y[base + i] as number) * f;
      }
  }

  /** The gated delta rule for one sequence: o [S, nV dv], before the gated norm. */
  private recur(Y: Float32Array, p: Projected, S: number, off: number): Float32Array {
    const { nK, nV, dk, dv, r, C } = this.dims;
    const A = this.param("A_log").data;
    const dt = this.param("dt_bias").data;
    const o = new Float32Array(S * nV * dv);
    const state = new Float32Array(dk * dv);
    const u = new Float32Array(dv);
    for (let h = 0; h < nV; h++) {
      state.fill(0);
      const kh = Math.floor(h / r);
      for (let t = 0; t < S; t++) {
        const q = t * C + kh * dk;
        const k = t * C + nK * dk + kh * dk;
        const v = t * C + 2 * nK * dk + h * dv;
        const at = (off + t) * nV + h;
        const pre = (p.a[at] as number) + (dt[h] as number);
        const softplus = pre > 20 ? pre : Math.log1p(Math.exp(pre));
        const decay = Math.exp(-Math.exp(A[h] as number) * softplus);
        const beta = sigmoidScalar(p.b[at] as number);
        for (let i = 0; i < dk * dv; i++) state[i] = (state[i] as number) * decay;
        u.fill(0);
        for (let i = 0; i < dk; i++) {
          const ki = Y[k + i] as number;
          for (let j = 0; j < dv; j++) u[j] = (u[j] as number) + (state[i * dv + j] as number) * ki;
        }
        for (let j = 0; j < dv; j++) u[j] = beta * ((Y[v + j] as number) - (u[j] as number));
        for (let i = 0; i < dk; i++) {
          const ki = Y[k + i] as number;
          for (let j = 0; j < dv; j++) state[i * dv + j] = (state[i * dv + j] as number) + ki * (u[j] as number);
        }
        const out = (t * nV + h) * dv;
        for (let i = 0; i < dk; i++) {
          const qi = Y[q + i] as number;
          for (let j = 0; j < dv; j++) o[out + j] = (o[out + j] as number) + (state[i * dv + j] as number) * qi;
        }
      }
    }
    return o;
  }

  /** Gated RMSNorm per value head: o * rsqrt(mean(o^2) + eps) * w * silu(z), in place. */
  private gatedNorm(o: Float32Array, z: Float32Array, S: number, off: number): void {
    const { nV, dv } = this.dims;
    const w = this.param("norm.weight").data;
    for (let t = 0; t < S; t++)
      for (let h = 0; h < nV; h++) {
        const base = (t * nV + h) * dv;
        const zb = ((off + t) * nV + h) * dv;
        let ms = 0;
        for (let j = 0; j < dv; j++) ms += (o[base + j] as number) ** 2;
        const inv = 1 / Math.sqrt(ms / dv + this.config.rmsNormEps);
        for (let j = 0; j < dv; j++) {
          const zj = z[zb + j] as number;
          o[base + j] = Math.fround((o[base + j] as number) * inv) * (w[j] as number) * zj * sigmoidScalar(zj);
        }
      }
  }

  async forward(x: Tensor): Promise<Tensor> {
    const [B, S] = [x.dim(0), x.dim(1)];
    const { nK, nV, dk, dv } = this.dims;
    const p = await this.project(x, B * S);
    const mixed = new Float32Array(B * S * nV * dv);
    for (let b = 0; b < B; b++) {
      const Y = this.conv(p.X, S, b * S);
      this.l2(Y, S, 0, nK, dk, 1 / Math.sqrt(dk));
      this.l2(Y, S, nK * dk, nK, dk, 1);
      const o = this.recur(Y, p, S, b * S);
      this.gatedNorm(o, p.z, S, b * S);
      mixed.set(o, b * S * nV * dv);
    }
    return this.lin("out_proj").call(new Tensor(mixed, [B, S, nV * dv]));
  }
}

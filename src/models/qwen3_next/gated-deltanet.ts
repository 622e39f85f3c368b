/**
 * The Gated DeltaNet token mixer of Qwen3-Next and Qwen3.5 (`linear_attn`): input projections, a
 * causal depthwise convolution with SiLU, l2-normalised queries and keys, a per-head gated delta
 * rule over a [dk, dv] state, a gated RMSNorm per value head and `out_proj`
 * (../shared/spec/qwen3_next.md, "Gated DeltaNet layer"). The recurrence runs in chunks of 64
 * tokens, its products batched over the value heads through the engine.
 */
import { getEngine } from "../../engine/index.js";
import { sigmoidScalar } from "../../engine/ops.js";
import { Tensor } from "../../engine/tensor.js";
import type { TokenMixer } from "../../nn/attention.js";
import { Linear } from "../../nn/layers.js";
import { Module } from "../../nn/module.js";
import type { Qwen3NextConfig } from "./config.js";

/** Tokens per chunk of the delta rule (transformers' chunked kernel uses 64 too). */
const CHUNK = 64;

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
  /** tokens per chunk of the delta rule (1 is the token-by-token recurrence itself; tests compare the two) */
  chunk = CHUNK;

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
   * Per token: the conv (2 Kc C), and per value head the chunk's products (recur): K S0, Q S0 and
   * the state update (6 dk dv), K K^T and Q K^T (4 CHUNK dk), T B and P U (4 CHUNK dv): linear in
   * the length.
   */
  mixingFlops(lengths: readonly number[]): number {
    const { nV, dk, dv, C, Kc } = this.dims;
    const tokens = lengths.reduce((a, S) => a + S, 0);
    return tokens * (2 * Kc * C + nV * (6 * dk * dv + 4 * CHUNK * (dk + dv)));
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
    const acc = new Float64Array(C);
    for (let t = 0; t < S; t++) {
      acc.fill(0);
      // tap j reads token t - (Kc - 1) + j (zeros before the first)
      for (let j = Math.max(0, Kc - 1 - t); j < Kc; j++) {
        const row = (off + t - (Kc - 1) + j) * C;
        for (let c = 0; c < C; c++) acc[c] = (acc[c] as number) + (w[c * Kc + j] as number) * (X[row + c] as number);
      }
      for (let c = 0; c < C; c++) {
        const v = acc[c] as number;
        Y[t * C + c] = v / (1 + Math.exp(-v));
      }
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

  /** Per value head h and token t: the log decay g = -exp(A_log) softplus(a + dt_bias) and beta = sigmoid(b). */
  private gates(p: Projected, S: number, off: number): { g: Float32Array; beta: Float32Array } {
    const { nV } = this.dims;
    const A = this.param("A_log").data;
    const dt = this.param("dt_bias").data;
    const g = new Float32Array(nV * S);
    const beta = new Float32Array(nV * S);
    for (let h = 0; h < nV; h++)
      for (let t = 0; t < S; t++) {
        const at = (off + t) * nV + h;
        const pre = (p.a[at] as number) + (dt[h] as number);
        g[h * S + t] = -Math.exp(A[h] as number) * (pre > 20 ? pre : Math.log1p(Math.exp(pre)));
        beta[h * S + t] = sigmoidScalar(p.b[at] as number);
      }
    return { g, beta };
  }

  /**
   * The gated delta rule for one sequence, o [S, nV dv] before the gated norm, in chunks of `chunk`
   * tokens with every value head batched through the engine. Per chunk, with G the cumulative log
   * decay from the chunk's start, S0 the state before it and Gamma[t, s] = exp(G_t - G_s):
   *   U = (I + strictly_lower(diag(beta) (Gamma o K K^T)))^-1 diag(beta) (V - diag(exp G) K S0)
   *   O = diag(exp G) Q S0 + (Gamma o Q K^T, s <= t) U
   *   S1 = exp(G_last) S0 + (diag(exp(G_last - G)) K)^T U
   * which is the token-by-token recurrence (the spec's) unrolled over the chunk.
   */
  private async recur(Y: Float32Array, p: Projected, S: number, off: number): Promise<Float32Array> {
    const { nK, nV, dk, dv, r, C } = this.dims;
    const engine = getEngine();
    const { g, beta } = this.gates(p, S, off);
    const o = new Float32Array(S * nV * dv);
    let state: Float32Array = new Float32Array(nV * dk * dv);
    for (let c0 = 0; c0 < S; c0 += this.chunk) {
      const n = Math.min(this.chunk, S - c0);
      // head-major chunk tensors; value head h reads q/k head h / r
      const Q = new Float32Array(nV * n * dk);
      const K = new Float32Array(nV * n * dk);
      const KT = new Float32Array(nV * dk * n);
      const V = new Float32Array(nV * n * dv);
      const G = new Float32Array(nV * n);
      for (let h = 0; h < nV; h++) {
        const kh = Math.floor(h / r);
        let cum = 0;
        for (let i = 0; i < n; i++) {
          const row = (c0 + i) * C;
          Q.set(Y.subarray(row + kh * dk, row + kh * dk + dk), (h * n + i) * dk);
          K.set(Y.subarray(row + nK * dk + kh * dk, row + nK * dk + kh * dk + dk), (h * n + i) * dk);
          V.set(Y.subarray(row + 2 * nK * dk + h * dv, row + 2 * nK * dk + h * dv + dv), (h * n + i) * dv);
          for (let d = 0; d < dk; d++) KT[(h * dk + d) * n + i] = Y[row + nK * dk + kh * dk + d] as number;
          cum += g[h * S + c0 + i] as number;
          G[h * n + i] = cum;
        }
      }
      const S0 = new Tensor(state, [nV, dk, dv]);
      const KS = (await engine.matmul(new Tensor(K, [nV, n, dk]), S0)).data;
      const QS = (await engine.matmul(new Tensor(Q, [nV, n, dk]), S0)).data;
      const KK = (await engine.matmul(new Tensor(K, [nV, n, dk]), new Tensor(KT, [nV, dk, n]))).data;
      const QK = (await engine.matmul(new Tensor(Q, [nV, n, dk]), new Tensor(KT, [nV, dk, n]))).data;
      const { T, B, P, KdT } = this.chunkMatrices({ n, G, beta, c0, S, KS, KK, QK, V, KT });
      const U = await engine.matmul(new Tensor(T, [nV, n, n]), new Tensor(B, [nV, n, dv]));
      const PU = (await engine.matmul(new Tensor(P, [nV, n, n]), U)).data;
      const dS = (await engine.matmul(new Tensor(KdT, [nV, dk, n]), U)).data;
      for (let h = 0; h < nV; h++) {
        for (let i = 0; i < n; i++) {
          const e = Math.exp(G[h * n + i] as number);
          const out = ((c0 + i) * nV + h) * dv;
          for (let j = 0; j < dv; j++) o[out + j] = e * (QS[(h * n + i) * dv + j] as number) + (PU[(h * n + i) * dv + j] as number);
        }
        const last = Math.exp(G[h * n + n - 1] as number);
        for (let x = h * dk * dv; x < (h + 1) * dk * dv; x++) dS[x] = last * (state[x] as number) + (dS[x] as number);
      }
      state = dS;
    }
    return o;
  }

  /** The chunk's small matrices, in TypeScript: T = (I + L)^-1, B, the masked decayed Q K^T and the decayed K^T (see recur). */
  private chunkMatrices(c: {
    n: number;
    G: Float32Array;
    beta: Float32Array;
    c0: number;
    S: number;
    KS: Float32Array;
    KK: Float32Array;
    QK: Float32Array;
    V: Float32Array;
    KT: Float32Array;
  }): { T: Float32Array; B: Float32Array; P: Float32Array; KdT: Float32Array } {
    const { nV, dk, dv } = this.dims;
    const { n, G } = c;
    const T = new Float32Array(nV * n * n);
    const B = new Float32Array(nV * n * dv);
    const P = new Float32Array(nV * n * n);
    const KdT = new Float32Array(nV * dk * n);
    const L = new Float64Array(n * n);
    const row = new Float64Array(n);
    for (let h = 0; h < nV; h++) {
      const gh = (i: number): number => G[h * n + i] as number;
      for (let t = 0; t < n; t++) {
        const bt = c.beta[h * c.S + c.c0 + t] as number;
        const et = Math.exp(gh(t));
        for (let j = 0; j < dv; j++)
          B[(h * n + t) * dv + j] = bt * ((c.V[(h * n + t) * dv + j] as number) - et * (c.KS[(h * n + t) * dv + j] as number));
        for (let s = 0; s <= t; s++) {
          const decay = Math.exp(gh(t) - gh(s));
          if (s < t) L[t * n + s] = bt * decay * (c.KK[(h * n + t) * n + s] as number);
          P[(h * n + t) * n + s] = decay * (c.QK[(h * n + t) * n + s] as number);
        }
        // row t of (I + L)^-1: e_t - sum_{s < t} L[t, s] row s
        row.fill(0);
        row[t] = 1;
        for (let s = 0; s < t; s++) {
          const l = L[t * n + s] as number;
          if (l !== 0) for (let x = 0; x <= s; x++) row[x] = (row[x] as number) - l * (T[(h * n + s) * n + x] as number);
        }
        for (let x = 0; x <= t; x++) T[(h * n + t) * n + x] = row[x] as number;
      }
      const gLast = gh(n - 1);
      for (let s = 0; s < n; s++) row[s] = Math.exp(gLast - gh(s));
      for (let d = 0; d < dk; d++)
        for (let s = 0; s < n; s++) KdT[(h * dk + d) * n + s] = (row[s] as number) * (c.KT[(h * dk + d) * n + s] as number);
    }
    return { T, B, P, KdT };
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
      const o = await this.recur(Y, p, S, b * S);
      this.gatedNorm(o, p.z, S, b * S);
      mixed.set(o, b * S * nV * dv);
    }
    return this.lin("out_proj").call(new Tensor(mixed, [B, S, nV * dv]));
  }
}

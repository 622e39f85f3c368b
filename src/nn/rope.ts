/**
 * Rotary position embeddings with YaRN scaling and both pairings (adjacent pairs, "interleaved";
 * or (j, j + d/2), "rotate-half"), as transformers' `_compute_yarn_parameters` and DeepSeek-V3's
 * `apply_rotary_pos_emb_interleave` compute them (../shared/spec/deepseek_v3.md).
 */

/** YaRN's settings from config.json's rope_scaling (absent fields: transformers' defaults). */
export interface YarnScaling {
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  /** null: absent (or 0) */
  mscale: number | null;
  mscaleAllDim: number | null;
  attentionFactor: number | null;
}

/** 0.1 * m * ln(f) + 1 (1 when f <= 1): YaRN's magnitude correction. */
export function yarnMscale(factor: number, m = 1): number {
  return factor <= 1 ? 1 : 0.1 * m * Math.log(factor) + 1;
}

/** The rotary dims' inverse frequencies, theta^(-2j/d), YaRN-blended when `yarn` is given; and the factor on cos and sin. */
export function ropeFrequencies(dim: number, theta: number, yarn: YarnScaling | null): { invFreq: Float32Array; attentionFactor: number } {
  const half = dim / 2;
  const base = Float32Array.from({ length: half }, (_, j) => 1 / theta ** ((2 * j) / dim));
  if (!yarn) return { invFreq: base, attentionFactor: 1 };
  const corr = (r: number): number => (dim * Math.log(yarn.originalMaxPositionEmbeddings / (2 * Math.PI * r))) / (2 * Math.log(theta));
  const low = Math.max(Math.floor(corr(yarn.betaFast)), 0);
  let high = Math.min(Math.ceil(corr(yarn.betaSlow)), dim - 1);
  if (low === high) high += 0.001;
  const invFreq = base.map((b, j) => {
    const ramp = Math.min(Math.max((j - low) / (high - low), 0), 1);
    return (b / yarn.factor) * ramp + b * (1 - ramp);
  });
  const { mscale, mscaleAllDim } = yarn;
  const attentionFactor =
    yarn.attentionFactor ??
    (mscale && mscaleAllDim ? yarnMscale(yarn.factor, mscale) / yarnMscale(yarn.factor, mscaleAllDim) : yarnMscale(yarn.factor));
  return { invFreq, attentionFactor };
}

/** cos and sin of position p times each frequency, times the attention factor: [S, d/2] each. */
export function ropeTables(invFreq: Float32Array, S: number, attentionFactor: number): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const cos = new Float32Array(S * half);
  const sin = new Float32Array(S * half);
  for (let p = 0; p < S; p++) {
    for (let j = 0; j < half; j++) {
      const angle = Math.fround(p * (invFreq[j] as number));
      cos[p * half + j] = Math.cos(angle) * attentionFactor;
      sin[p * half + j] = Math.sin(angle) * attentionFactor;
    }
  }
  return { cos, sin };
}

/**
 * Rotate the `2 * half` dims of x starting at `at` for position p: adjacent pairs (2j, 2j+1)
 * when interleaved, else (j, j + half).
 */
export function rotateAt(
  x: Float32Array,
  at: number,
  p: number,
  tables: { cos: Float32Array; sin: Float32Array },
  half: number,
  interleaved: boolean,
): void {
  for (let j = 0; j < half; j++) {
    const [i1, i2] = interleaved ? [at + 2 * j, at + 2 * j + 1] : [at + j, at + j + half];
    const x1 = x[i1] as number;
    const x2 = x[i2] as number;
    const c = tables.cos[p * half + j] as number;
    const s = tables.sin[p * half + j] as number;
    x[i1] = x1 * c - x2 * s;
    x[i2] = x2 * c + x1 * s;
  }
}

/**
 * NeoX rotate-half RoPE (no scaling) in place on x viewed as [B, S, heads, D], position of (b, s)
 * being s, over the first `rotary` dims of each head (all unless partial); the rest pass through.
 */
export function applyRopeInPlace(x: Float32Array, b: number, s: number, heads: number, d: number, theta: number, rotary = d): void {
  const { invFreq, attentionFactor } = ropeFrequencies(rotary, theta, null);
  const tables = ropeTables(invFreq, s, attentionFactor);
  for (let bi = 0; bi < b; bi++)
    for (let p = 0; p < s; p++) for (let h = 0; h < heads; h++) rotateAt(x, ((bi * s + p) * heads + h) * d, p, tables, rotary / 2, false);
}

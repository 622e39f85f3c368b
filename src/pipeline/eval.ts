import { loadTokenizer } from "../io/tokenizer.js";
import type { Tensor } from "../engine/tensor.js";
import { openServed } from "./serving.js";
import { STREAM_CHUNK_TOKENS, chunksByTokens, streamedHidden, withParameters } from "./stream.js";
import { UsageError } from "../errors.js";
import { loadTokenizedSamples } from "./dataset.js";

export interface EvalOptions {
  model: string;
  /** compare against this model: mean per-token KL(reference || model) */
  reference?: string;
  dataset: string;
  numSamples?: number;
  maxSeqLength?: number;
  /** samples go through the models in chunks of at most this many tokens (default STREAM_CHUNK_TOKENS) */
  chunkTokens?: number;
}

export interface EvalResult {
  /** mean negative log-likelihood per predicted token (nats) */
  nll: number;
  ppl: number;
  /** mean per-token KL(reference || model), null without a reference */
  kl: number | null;
  /** predicted tokens (each sample of length S predicts S - 1) */
  tokens: number;
  /** how the per-token KL is distributed (null without a reference) */
  klStats: KlStats | null;
}

/**
 * The distribution of per-token KL. On small evaluation sets a handful of tokens (a flipped
 * routing decision, a near-tie between two next tokens) can carry most of the mean; these say
 * whether they do.
 */
export interface KlStats {
  median: number;
  /** the 99th percentile */
  p99: number;
  max: number;
  /** mean over all tokens but the 1% with the largest KL */
  meanWithoutTop1Percent: number;
  /** fraction of the summed KL carried by that top 1% */
  top1PercentShare: number;
}

/** Distribution statistics of per-token KL values. */
export function klStats(perToken: Float64Array): KlStats {
  const v = Float64Array.from(perToken).sort();
  const n = v.length;
  const at = (q: number): number => v[Math.min(n - 1, Math.floor(q * n))] as number;
  const top = Math.ceil(n / 100);
  let total = 0;
  let rest = 0;
  for (let i = 0; i < n; i++) {
    total += v[i] as number;
    if (i < n - top) rest += v[i] as number;
  }
  return {
    median: n % 2 ? (v[n >> 1] as number) : ((v[n / 2 - 1] as number) + (v[n / 2] as number)) / 2,
    p99: at(0.99),
    max: v[n - 1] as number,
    meanWithoutTop1Percent: n > top ? rest / (n - top) : 0,
    top1PercentShare: total > 0 ? (total - rest) / total : 0,
  };
}

/** log-softmax of one row, in float64. */
function logSoftmax(row: Float32Array, start: number, V: number): Float64Array {
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, row[start + v] as number);
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp((row[start + v] as number) - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(V);
  for (let v = 0; v < V; v++) out[v] = (row[start + v] as number) - lse;
  return out;
}

/**
 * Perplexity of `model` on the first N samples of a dataset (file order, each sample alone:
 * BOS + text truncated to L), and with a reference the mean KL divergence per token. Both models
 * run layer by layer (`streamedHidden`) over chunks of samples; only the two lm_heads are held
 * together, at the end of each chunk.
 */
export async function evaluate(opts: EvalOptions): Promise<EvalResult> {
  const m = openServed(opts.model, { load: false });
  const ref = opts.reference ? openServed(opts.reference, { load: false }) : null;
  if (ref && ref.config.vocabSize !== m.config.vocabSize) {
    throw new UsageError(`reference vocabulary ${ref.config.vocabSize} differs from the model's ${m.config.vocabSize}`);
  }
  const tok = loadTokenizer(opts.model);
  const samples = loadTokenizedSamples(opts.dataset, tok, {
    numSamples: opts.numSamples,
    maxSeqLength: opts.maxSeqLength ?? Math.min(2048, m.config.maxPositionEmbeddings),
    shuffleSeed: null,
  }).filter((ids) => ids.length >= 2);
  if (samples.length === 0) throw new UsageError(`dataset ${opts.dataset}: no sample has two or more tokens to evaluate`);
  const V = m.config.vocabSize;
  let nll = 0;
  let kl = 0;
  let n = 0;
  const perToken: number[] = [];
  // hidden states of a chunk of samples at a time, so memory is bounded whatever the dataset's size
  for (const chunk of chunksByTokens(samples, opts.chunkTokens ?? STREAM_CHUNK_TOKENS)) {
    const hidden = await streamedHidden(m, chunk);
    const refHidden = ref ? await streamedHidden(ref, chunk) : null;
    const score = async (): Promise<void> => {
      for (let s = 0; s < chunk.length; s++) {
        const ids = chunk[s] as number[];
        const logits = (await m.model.lm_head.call(hidden[s] as Tensor)).data;
        const refLogits = ref && refHidden ? (await ref.model.lm_head.call(refHidden[s] as Tensor)).data : null;
        for (let t = 0; t < ids.length - 1; t++) {
          const lp = logSoftmax(logits, t * V, V);
          nll -= lp[ids[t + 1] as number] as number;
          if (refLogits) {
            const lq = logSoftmax(refLogits, t * V, V);
            let k = 0;
            for (let v = 0; v < V; v++) k += Math.exp(lq[v] as number) * ((lq[v] as number) - (lp[v] as number));
            kl += k;
            perToken.push(k);
          }
          n++;
        }
      }
    };
    await withParameters(m, "lm_head", () => (ref ? withParameters(ref, "lm_head", score) : score()));
  }
  return {
    nll: nll / n,
    ppl: Math.exp(nll / n),
    kl: ref ? kl / n : null,
    tokens: n,
    klStats: ref ? klStats(Float64Array.from(perToken)) : null,
  };
}

import { loadTokenizer } from "../io/tokenizer.js";
import { EVAL_OPTIONS, checkOptions } from "./options.js";
import type { Tensor } from "../engine/tensor.js";
import { openServed } from "./serving.js";
import { STREAM_CHUNK_TOKENS, chunksByTokens, streamedHidden, withParameters } from "./stream.js";
import { UsageError } from "../errors.js";
import { loadTokenizedSamples, seqLengthFor } from "./dataset.js";

export interface EvalOptions {
  model: string;
  /** compare against this model (a folder, or its logits from `referenceLogits`): mean per-token KL(reference || model) */
  reference?: string | ReferenceLogits;
  dataset: string;
  numSamples?: number;
  maxSeqLength?: number;
  /** samples go through the models in chunks of at most this many tokens (default STREAM_CHUNK_TOKENS) */
  chunkTokens?: number;
  /** progress in layer passes (a chunk of samples through one layer of one model) */
  onProgress?: (done: number, total: number) => void;
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

/** A reference model's logits on a dataset's evaluation samples, computed once for many evaluations. */
export interface ReferenceLogits {
  vocabSize: number;
  /** the samples' token ids, to check that an evaluation reads the same samples */
  samples: number[][];
  /** per sample [S, V] */
  logits: Float32Array[];
}

/** The evaluation samples of a dataset (file order, BOS + text truncated, at least two tokens). */
function evalSamples(modelDir: string, opts: Omit<EvalOptions, "model" | "reference">, maxPositions: number): number[][] {
  const samples = loadTokenizedSamples(opts.dataset, loadTokenizer(modelDir), {
    numSamples: opts.numSamples,
    maxSeqLength: seqLengthFor(opts.maxSeqLength, maxPositions),
    shuffleSeed: null,
  }).filter((ids) => ids.length >= 2);
  if (samples.length === 0) throw new UsageError(`dataset ${opts.dataset}: no sample has two or more tokens to evaluate`);
  return samples;
}

/** Logits of `reference` on the evaluation samples of `opts.dataset` (for `evaluate`'s `reference`). */
export async function referenceLogits(reference: string, opts: Omit<EvalOptions, "model" | "reference">): Promise<ReferenceLogits> {
  const ref = openServed(reference, { load: false });
  const samples = evalSamples(reference, opts, ref.config.maxPositionEmbeddings);
  const logits: Float32Array[] = [];
  for (const chunk of chunksByTokens(samples, opts.chunkTokens ?? STREAM_CHUNK_TOKENS)) {
    const hidden = await streamedHidden(ref, chunk);
    await withParameters(ref, "lm_head", async () => {
      for (const h of hidden) logits.push((await ref.model.lm_head.call(h)).data);
    });
  }
  return { vocabSize: ref.config.vocabSize, samples, logits };
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
export async function evaluate(options: EvalOptions): Promise<EvalResult> {
  const opts = checkOptions("evaluate", EVAL_OPTIONS, options) as EvalOptions;
  const m = openServed(opts.model, { load: false });
  const given = typeof opts.reference === "object" ? opts.reference : null;
  const ref = typeof opts.reference === "string" ? openServed(opts.reference, { load: false }) : null;
  const refVocab = given?.vocabSize ?? ref?.config.vocabSize;
  if (refVocab !== undefined && refVocab !== m.config.vocabSize) {
    throw new UsageError(`reference vocabulary ${refVocab} differs from the model's ${m.config.vocabSize}`);
  }
  const samples = evalSamples(opts.model, opts, m.config.maxPositionEmbeddings);
  if (given && JSON.stringify(given.samples) !== JSON.stringify(samples))
    throw new UsageError(`the reference logits were computed on other samples than ${opts.dataset} gives with this model's tokenizer`);
  const hasRef = ref !== null || given !== null;
  const V = m.config.vocabSize;
  let done = 0;
  let nll = 0;
  let kl = 0;
  let n = 0;
  const perToken: number[] = [];
  const chunks = chunksByTokens(samples, opts.chunkTokens ?? STREAM_CHUNK_TOKENS);
  const passes = chunks.length * (m.config.numHiddenLayers + (ref?.config.numHiddenLayers ?? 0));
  let passed = 0;
  const onLayer = (): void => opts.onProgress?.(++passed, passes);
  // hidden states of a chunk of samples at a time, so memory is bounded whatever the dataset's size
  for (const chunk of chunks) {
    const hidden = await streamedHidden(m, chunk, { onLayer });
    const refHidden = ref ? await streamedHidden(ref, chunk, { onLayer }) : null;
    const score = async (): Promise<void> => {
      for (let s = 0; s < chunk.length; s++) {
        const ids = chunk[s] as number[];
        const logits = (await m.model.lm_head.call(hidden[s] as Tensor)).data;
        const refLogits = given
          ? (given.logits[done + s] as Float32Array)
          : ref && refHidden
            ? (await ref.model.lm_head.call(refHidden[s] as Tensor)).data
            : null;
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
    done += chunk.length;
  }
  return {
    nll: nll / n,
    ppl: Math.exp(nll / n),
    kl: hasRef ? kl / n : null,
    tokens: n,
    klStats: hasRef ? klStats(Float64Array.from(perToken)) : null,
  };
}

/**
 * Running whole datasets through a model one layer at a time: only the current layer's weights
 * are in memory, every sample's hidden states are carried from layer to layer (as llm-compressor's
 * sequential pipeline does), so memory does not grow with depth. Used by eval and coverage;
 * oneshot adds calibration and quantization between a layer's load and unload.
 */
import type { Tensor } from "../engine/tensor.js";
import { UsageError } from "../errors.js";
import type { DecoderLayer } from "../models/family.js";
import type { LoadedModel } from "../models/registry.js";
import { type WeightRecycler, assertFinite, loadParametersAsync, unloadParameters } from "../nn/weights.js";
import { Embedding } from "../nn/layers.js";

/** Tokens per chunk of samples: a chunk's hidden states take tokens x hidden_size x 4 bytes (1 GiB at hidden 1024). */
export const STREAM_CHUNK_TOKENS = 262144;

/** Runs `body` on a layer, possibly inside a context (e.g. the MoE calibration context). */
export type LayerContext = (layer: DecoderLayer, index: number, body: (layer: DecoderLayer) => Promise<void>) => Promise<void>;

export interface StreamOptions {
  /** wrap each decoder layer's pass over the samples */
  around?: LayerContext;
  /** apply the final norm (the input of lm_head); default true */
  finalNorm?: boolean;
  /** called after each decoder layer's pass over the samples */
  onLayer?: () => void;
}

const named =
  (prefix: string) =>
  (n: string): boolean =>
    n === prefix || n.startsWith(`${prefix}.`);

/** What streaming needs of an opened model. */
export type StreamModel = Pick<LoadedModel, "model" | "source" | "mapping" | "config">;

/**
 * Load the parameters under `prefix`, run `run`, and unload them again (also when it throws); with a
 * recycler, into the arrays of the parameters unloaded before (WeightRecycler: nothing may keep one).
 */
export async function withParameters<T>(m: StreamModel, prefix: string, run: () => Promise<T>, recycler?: WeightRecycler): Promise<T> {
  await loadParametersAsync(m.model, m.source, m.mapping, named(prefix), "", recycler);
  try {
    return await run();
  } finally {
    unloadParameters(m.model, named(prefix), "", recycler);
  }
}

/**
 * Run `run` with the embeddings available: rows read from the checkpoint as they are asked for
 * where the source can (memory of the samples' tokens, not of the vocabulary), else the table loaded.
 */
export async function withEmbeddings<T>(m: StreamModel, run: () => Promise<T>): Promise<T> {
  const source = m.source;
  const src = m.mapping.sources.get("model.embed_tokens.weight");
  if (!source.readRowsF32 || !src) return withParameters(m, "model.embed_tokens", run);
  const table = m.model.getSubmodule("model.embed_tokens");
  if (!(table instanceof Embedding)) return withParameters(m, "model.embed_tokens", run);
  table.rows = (ids: Int32Array) => {
    const t = source.readRowsF32?.(src, ids) as Tensor;
    assertFinite(t, `${source.dir}: tensor "${src}"`);
    return t;
  };
  try {
    return await run();
  } finally {
    table.rows = null;
  }
}

/** Every sample's input of layer 0. */
export async function embedSamples(m: StreamModel, samples: number[][]): Promise<Tensor[]> {
  return withEmbeddings(m, async () => {
    const out: Tensor[] = [];
    for (const ids of samples) out.push(await m.model.model.embed({ ids: Int32Array.from(ids), shape: [1, ids.length] }));
    return out;
  });
}

/**
 * The one layer-by-layer loop: `step` runs on each decoder layer in turn with only that layer's
 * weights loaded, and returns the next layer's inputs.
 */
export async function eachLayer(
  m: StreamModel,
  hidden: Tensor[],
  step: (layer: DecoderLayer, index: number, hidden: Tensor[]) => Promise<Tensor[]>,
): Promise<Tensor[]> {
  let h = hidden;
  for (let i = 0; i < m.config.numHiddenLayers; i++) {
    const input = h;
    h = await withParameters(m, `model.layers.${i}`, () => step(m.model.model.layers.at(i), i, input));
  }
  return h;
}

/** Each sample's hidden states after the last layer (and the final norm unless told not to). */
export async function streamedHidden(m: StreamModel, samples: number[][], opts: StreamOptions = {}): Promise<Tensor[]> {
  const around: LayerContext = opts.around ?? ((layer, _i, body) => body(layer));
  const hidden = await eachLayer(m, await embedSamples(m, samples), async (layer, i, input) => {
    const out: Tensor[] = [];
    await around(layer, i, async (l) => {
      for (const h of input) out.push(await l.call(h));
    });
    opts.onLayer?.();
    return out;
  });
  if (opts.finalNorm === false) return hidden;
  return withParameters(m, "model.norm", async () => {
    const out: Tensor[] = [];
    for (const h of hidden) out.push(await m.model.model.norm.call(h));
    return out;
  });
}

/**
 * Consecutive groups of samples with at most `maxTokens` tokens each (a longer sample is a group
 * of its own), in order.
 */
export function chunksByTokens(samples: number[][], maxTokens: number): number[][][] {
  if (!Number.isInteger(maxTokens) || maxTokens < 1)
    throw new UsageError(`chunk size must be a positive integer number of tokens, got ${maxTokens}`);
  const chunks: number[][][] = [];
  let current: number[][] = [];
  let tokens = 0;
  for (const s of samples) {
    if (current.length > 0 && tokens + s.length > maxTokens) {
      chunks.push(current);
      current = [];
      tokens = 0;
    }
    current.push(s);
    tokens += s.length;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

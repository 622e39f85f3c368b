import { withMoeCalibration } from "../calibration/context.js";
import { COVERAGE_OPTIONS, checkOptions } from "./options.js";
import { type Coverage, trackCoverage } from "../calibration/coverage.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { openServed } from "./serving.js";
import { loadTokenizedSamples, seqLengthFor } from "./dataset.js";
import { STREAM_CHUNK_TOKENS, chunksByTokens, streamedHidden } from "./stream.js";

export interface CoverageOptions {
  model: string;
  dataset: string;
  numSamples?: number;
  /** tokens per sample (default min(2048, max_position_embeddings)) */
  maxSeqLength?: number;
  calibrateAllExperts?: boolean;
  /** progress in layer passes (a chunk of samples through one layer) */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Expert coverage of a dataset: the first N samples in file order, each tokenized alone and
 * run through the model layer by layer (one layer's weights in memory) inside the calibration
 * context.
 */
export async function measureCoverage(options: CoverageOptions): Promise<Coverage & { samples: number; tokens: number }> {
  const opts = checkOptions("measureCoverage", COVERAGE_OPTIONS, options) as CoverageOptions;
  const m = openServed(opts.model, { load: false });
  const tok = loadTokenizer(opts.model);
  const samples = loadTokenizedSamples(opts.dataset, tok, {
    numSamples: opts.numSamples,
    maxSeqLength: seqLengthFor(opts.maxSeqLength, m.config.maxPositionEmbeddings),
    shuffleSeed: null,
  });
  const tracker = trackCoverage(m.model);
  try {
    const calibration = { calibrateAllExperts: opts.calibrateAllExperts ?? true, config: m.config };
    const chunks = chunksByTokens(samples, STREAM_CHUNK_TOKENS);
    const passes = chunks.length * m.config.numHiddenLayers;
    let passed = 0;
    for (const chunk of chunks) {
      await streamedHidden(m, chunk, {
        finalNorm: false,
        around: (layer, _i, body) => withMoeCalibration(layer, calibration, body),
        onLayer: () => opts.onProgress?.(++passed, passes),
      });
    }
  } finally {
    tracker.remove();
  }
  return { ...tracker.coverage, samples: samples.length, tokens: samples.reduce((a, s) => a + s.length, 0) };
}

import { withMoeCalibration } from "../calibration/context.js";
import { Coverage, trackCoverage } from "../calibration/coverage.js";
import { loadTokenizer } from "../io/tokenizer.js";
import { openAfmoe } from "../models/afmoe/index.js";
import { loadTokenizedSamples } from "./dataset.js";

export interface CoverageOptions {
  model: string;
  dataset: string;
  numSamples?: number;
  maxSeqLength: number;
  calibrateAllExperts?: boolean;
}

/**
 * Expert coverage of a dataset: the first N samples in file order, each tokenized alone and
 * run through the whole model (one forward per sample) inside the calibration context.
 */
export async function measureCoverage(opts: CoverageOptions): Promise<Coverage & { samples: number; tokens: number }> {
  const { model } = openAfmoe(opts.model);
  const tok = loadTokenizer(opts.model);
  const samples = loadTokenizedSamples(opts.dataset, tok, { numSamples: opts.numSamples, maxSeqLength: opts.maxSeqLength, shuffleSeed: null });
  const tracker = trackCoverage(model);
  try {
    await withMoeCalibration(model, { calibrateAllExperts: opts.calibrateAllExperts ?? true }, async (m) => {
      for (const ids of samples) await m.call({ ids: { ids: Int32Array.from(ids), shape: [1, ids.length] } });
    });
  } finally {
    tracker.remove();
  }
  return { ...tracker.coverage, samples: samples.length, tokens: samples.reduce((a, s) => a + s.length, 0) };
}

import { test } from "node:test";
import assert from "node:assert/strict";
import { measureCoverage } from "../../src/pipeline/coverage.js";
import { TINY, golden, goldenDataset, goldenInts, tempDir } from "../helpers.js";

test("coverage, streamed layer by layer, reproduces the reference's routed counts of layer 1 on the golden inputs", async () => {
  const { file, batch, seq } = goldenDataset(tempDir("moecal-coverage-"));
  const want = goldenInts(golden("moe-layer1.safetensors"), "routed_counts");
  for (const calibrateAllExperts of [true, false]) {
    const c = await measureCoverage({ model: TINY, dataset: file, maxSeqLength: seq, calibrateAllExperts });
    assert.equal(c.tokens, batch * seq);
    assert.deepEqual(c.layers["1"]?.routed, want, `calibrateAllExperts ${calibrateAllExperts}`);
    assert.deepEqual(c.layers["1"]?.seen, calibrateAllExperts ? want.map(() => batch * seq) : want);
  }
});

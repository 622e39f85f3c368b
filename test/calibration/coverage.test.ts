import { test } from "node:test";
import assert from "node:assert/strict";
import { AfmoeMoE } from "../../src/models/afmoe/index.js";
import { withMoeCalibration } from "../../src/calibration/context.js";
import { trackCoverage } from "../../src/calibration/coverage.js";
import { TINY, golden, goldenInts, openAfmoe } from "../helpers.js";

test("coverage counts match the golden routed counts of layer 1, in both modes", async () => {
  const { model } = openAfmoe(TINY);
  const g = golden("forward.safetensors");
  const ids = { ids: Int32Array.from(goldenInts(g, "input_ids")), shape: [2, 96] };
  const expected = goldenInts(golden("moe-layer1.safetensors"), "routed_counts");
  for (const calibrateAllExperts of [true, false]) {
    const tracker = trackCoverage(model);
    await withMoeCalibration(model, { calibrateAllExperts }, (m) => m.call({ ids }));
    tracker.remove();
    const l1 = tracker.coverage.layers["1"];
    assert.ok(l1);
    assert.deepEqual(l1.routed, expected);
    assert.deepEqual(l1.seen, calibrateAllExperts ? new Array(16).fill(192) : expected);
  }
  // outside the context the original block only runs experts on routed tokens
  const tracker = trackCoverage(model);
  await model.call({ ids });
  tracker.remove();
  assert.deepEqual(tracker.coverage.layers["1"]?.seen, expected);
  assert.ok(model.getSubmodule("model.layers.1.mlp") instanceof AfmoeMoE);
});

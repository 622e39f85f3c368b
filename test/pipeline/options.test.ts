/**
 * The public JS API checks its options at run time: what a plain-JS caller gets wrong is a
 * UsageError naming the function and the option, before any work and with nothing written.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { UsageError } from "../../src/errors.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { evaluate } from "../../src/pipeline/eval.js";
import { measureCoverage } from "../../src/pipeline/coverage.js";
import { randomModel } from "../../src/pipeline/random-model.js";
import { forwardFile } from "../../src/pipeline/forward.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { loadTokenizedSamples } from "../../src/pipeline/dataset.js";
import { loadTokenizer } from "../../src/io/tokenizer.js";
import { BUNDLED_DATASET, BUNDLED_MODEL } from "../../src/paths.js";
import { tempDir } from "../helpers.js";

const tmp = tempDir("moecal-options-");
const out = path.join(tmp, "out");
const base = { method: "rtn", numSamples: 1, maxSeqLength: 8, output: out } as const;

/** What a plain-JS caller passes, typed as anything. */
const loose = (o: Record<string, unknown>): never => o as never;

for (const [opts, message] of [
  [{ ignore: "re:.*experts.*" }, /oneshot: option "ignore": .*expected array.*got the string "re:\.\*experts\.\*"/],
  [{ calibrateAllExperts: "false" }, /oneshot: option "calibrateAllExperts": .*expected boolean.*got the string "false"/],
  [{ actorder: "none" }, /oneshot: option "actorder": .*got the string "none"/],
  [{ dampening: Number.NaN }, /oneshot: option "dampening": .*got number NaN/],
  [{ dampening: 0 }, /oneshot: option "dampening": .*got number 0/],
  [{ maxShardBytes: 0 }, /oneshot: option "maxShardBytes": .*got number 0/],
  [{ calibrateAllExpert: false }, /oneshot: unknown option "calibrateAllExpert" \(known: model, dataset, scheme/],
  [{ scheme: 4 }, /oneshot: option "scheme": .*expected string.*got number 4/],
  [{ scheme: [] }, /oneshot: option "scheme": .*expected array to have >=1 items/],
  [{ seed: "abc" }, /oneshot: option "seed": .*got the string "abc"/],
  [{ seed: -1 }, /oneshot: option "seed": .*got number -1/],
  [{ model: 42 }, /oneshot: option "model": .*got number 42/],
  [{ numSamples: 1.5 }, /oneshot: option "numSamples": .*got number 1\.5/],
  [{ onProgress: "yes" }, /oneshot: option "onProgress": expected a function/],
] as const) {
  test(`oneshot(${JSON.stringify(opts)}) is a UsageError naming the option; nothing is written`, async () => {
    await assert.rejects(oneshot(loose({ ...base, ...opts })), (e: unknown) => e instanceof UsageError && message.test(e.message));
    assert.equal(fs.existsSync(out), false);
    assert.deepEqual(fs.readdirSync(tmp), []);
  });
}

test("oneshot(options that are not an object) and the other public functions check theirs the same way", async () => {
  await assert.rejects(oneshot(loose("W4A16" as never)), /oneshot: options must be an object, got the string "W4A16"/);
  await assert.rejects(
    evaluate(loose({ model: BUNDLED_MODEL, dataset: BUNDLED_DATASET, numSample: 2 })),
    /evaluate: unknown option "numSample"/,
  );
  await assert.rejects(
    measureCoverage(loose({ model: BUNDLED_MODEL, dataset: BUNDLED_DATASET, maxSeqLength: "8" })),
    /measureCoverage: option "maxSeqLength": .*got the string "8"/,
  );
  assert.throws(() => randomModel(loose({ output: out, layers: 0 })), /randomModel: option "layers": .*got number 0/);
  await assert.rejects(
    forwardFile(loose({ model: BUNDLED_MODEL, inputIds: 7, output: out })),
    /forwardFile: option "inputIds": .*got number 7/,
  );
  assert.throws(() => inspectCheckpoint(loose({}) as never), /inspectCheckpoint: the checkpoint folder must be a non-empty path/);
  assert.throws(
    () => loadTokenizedSamples(BUNDLED_DATASET, loadTokenizer(BUNDLED_MODEL), loose({ maxSeqLength: 8, shuffle: 1 })),
    /loadTokenizedSamples: unknown option "shuffle"/,
  );
  assert.equal(fs.existsSync(out), false);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { chunksByTokens } from "../../src/pipeline/stream.js";
import { UsageError } from "../../src/errors.js";

const s = (n: number, tag: number): number[] => new Array<number>(n).fill(tag);

test("chunksByTokens: consecutive groups within the budget, in order; a longer sample alone; bad sizes refused", () => {
  const samples = [s(3, 0), s(4, 1), s(2, 2), s(9, 3), s(1, 4), s(5, 5)];
  const chunks = chunksByTokens(samples, 8);
  assert.deepEqual(
    chunks.map((c) => c.map((x) => x[0])),
    [[0, 1], [2], [3], [4, 5]],
  );
  assert.deepEqual(chunks.flat(), samples);
  assert.deepEqual(chunksByTokens(samples, 1000), [samples]);
  assert.deepEqual(chunksByTokens([], 8), []);
  assert.throws(() => chunksByTokens(samples, 0), UsageError);
  assert.throws(() => chunksByTokens(samples, 2.5), UsageError);
});

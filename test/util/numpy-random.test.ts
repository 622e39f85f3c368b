import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { ROOT } from "../helpers.js";
import { hfShuffled, numpyPermutation, seedSequenceState } from "../../src/util/numpy-random.js";
import { UsageError } from "../../src/errors.js";

interface Fixture {
  numpy: string;
  permutations: { seed: number; n: number; head: number[]; checksum: number }[];
  seedSequenceState8: Record<string, number[]>;
}
// written by scripts/numpy-permutations.py (NumPy's own default_rng and SeedSequence)
const fx = JSON.parse(fs.readFileSync(path.join(ROOT, "test", "fixtures", "numpy", "permutations.json"), "utf8")) as Fixture;

test("SeedSequence(seed).generate_state(8) equals NumPy's for small, 32-bit-edge and 53-bit seeds", () => {
  for (const [seed, want] of Object.entries(fx.seedSequenceState8)) {
    assert.deepEqual(Array.from(seedSequenceState(Number(seed), 8)), want, `seed ${seed}`);
  }
});

test(`default_rng(seed).permutation(n) equals NumPy ${fx.numpy}'s on ${fx.permutations.length} (seed, n) pairs`, () => {
  for (const c of fx.permutations) {
    const p = numpyPermutation(c.n, c.seed);
    assert.deepEqual(p.slice(0, 64), c.head, `seed ${c.seed}, n ${c.n}: first entries`);
    let sum = 0;
    for (let i = 0; i < p.length; i++) sum = (sum + (p[i] as number) * (i + 1)) % (2 ** 31 - 1);
    assert.equal(sum, c.checksum, `seed ${c.seed}, n ${c.n}: checksum`);
    assert.deepEqual(
      [...p].sort((a, b) => a - b),
      Array.from({ length: c.n }, (_, i) => i),
      `seed ${c.seed}, n ${c.n}: a permutation`,
    );
  }
});

test("hfShuffled orders items by the permutation; bad seeds are usage errors", () => {
  const items = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
  // np.random.default_rng(42).permutation(10) = [5 6 0 7 3 2 4 9 1 8]
  assert.deepEqual(hfShuffled(items, 42), ["f", "g", "a", "h", "d", "c", "e", "j", "b", "i"]);
  assert.throws(() => numpyPermutation(4, -1), UsageError);
  assert.throws(() => numpyPermutation(4, 1.5), UsageError);
  assert.throws(() => numpyPermutation(4, 2 ** 53), UsageError);
});

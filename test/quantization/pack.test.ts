import { test } from "node:test";
import assert from "node:assert/strict";
import { packColumns, packRows, unpackColumns, unpackRows } from "../../src/quantization/pack.js";
import { rng } from "../../src/util/random.js";

function randomCodes(n: number, bits: number, seed: number): Int8Array {
  const r = rng(seed);
  return Int8Array.from({ length: n }, () => Math.floor(r() * 2 ** bits) - 2 ** (bits - 1));
}

test("int4 packing layout: element k in word k/8 at bit 4*(k%8), offset by 8, signed words", () => {
  const q = Int8Array.from([-8, -7, 0, 1, 2, 3, 4, 7, 5]);
  const p = packRows(q, 1, 9, 4);
  assert.equal(p.length, 2);
  // nibbles: 0,1,8,9,10,11,12,15 -> 0xFCBA9810 as int32
  assert.equal(p[0], 0xfcba9810 | 0);
  assert.equal(p[1], 13);
});

test("int8 packing: 4 values per word", () => {
  const p = packRows(Int8Array.from([-128, 0, 127, 1]), 1, 4, 8);
  assert.equal(p[0], 0 | (128 << 8) | (255 << 16) | (129 << 24) | 0);
});

for (const bits of [4, 8]) {
  for (const [rows, cols] of [
    [3, 16],
    [5, 13],
    [1, 1],
    [7, 33],
  ] as const) {
    test(`pack/unpack round trip: ${bits} bits, [${rows}, ${cols}] along rows and columns`, () => {
      const q = randomCodes(rows * cols, bits, rows * 100 + cols + bits);
      assert.deepEqual(unpackRows(packRows(q, rows, cols, bits), rows, cols, bits), q);
      const pc = packColumns(q, rows, cols, bits);
      assert.equal(pc.length, Math.ceil((rows * bits) / 32) * cols);
      assert.deepEqual(unpackColumns(pc, rows, cols, bits), q);
    });
  }
}

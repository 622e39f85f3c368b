import { test } from "node:test";
import assert from "node:assert/strict";
import {
  bf16ToF32,
  bf16ToF32Checked,
  f16ToF32,
  f32ToBf16,
  f32ToBf16Bits,
  f32ToF16,
  f32ToF16Bits,
  f32ToFp8e4m3,
  fp8e4m3ToF32,
} from "../../src/engine/dtype.js";

test("bf16: exact values, round to nearest even, NaN kept", () => {
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  assert.equal(f32ToBf16Bits(-2), 0xc000);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1)
  assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1+2^-7 and 1+2^-6: ties to even (1 + 2^-6)
  assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82);
  assert.ok(Number.isNaN(bf16ToF32(new Uint16Array([f32ToBf16Bits(NaN)]))[0]));
  const xs = new Float32Array([0, 1.5, -3.25, 65280, 1e-20]);
  assert.deepEqual([...bf16ToF32(f32ToBf16(xs))].slice(0, 4), [0, 1.5, -3.25, 65280]);
});

test("bf16 to float32 finds a non-finite value in the same pass (NaN, either infinity), and only those", () => {
  // the largest finite values of both signs, a subnormal, zeros: finite
  const finite = new Uint16Array([0x7f7f, 0xff7f, 0x0001, 0x8000, 0x0000, 0x3f80]);
  const c = bf16ToF32Checked(finite);
  assert.equal(c.finite, true);
  assert.deepEqual([...c.data], [...bf16ToF32(finite)]);
  // two values a word where aligned: a bad value in either half, an unaligned view, an odd tail
  const words = new Uint16Array(1002);
  for (const [offset, length] of [
    [0, 1000],
    [1, 1000],
    [0, 1001],
    [1, 1001],
  ] as const)
    for (const at of [616, 617, length - 1])
      for (const bad of [0x7f80, 0xff80, 0x7fc0, 0xffff, 0x7f81]) {
        words.fill(0x3f80).fill(0xff7f, offset, offset + 9);
        const bits = words.subarray(offset, offset + length);
        bits[at] = bad;
        const r = bf16ToF32Checked(bits);
        const what = `0x${bad.toString(16)} at ${at} of ${length}, offset ${offset}`;
        assert.equal(r.finite, false, what);
        assert.deepEqual(
          new Uint32Array(r.data.buffer),
          Uint32Array.from(bits, (b) => b << 16),
          what,
        );
        bits[at] = 0x7f7f;
        assert.equal(bf16ToF32Checked(bits).finite, true, what);
      }
});

test("f16: exact values, subnormals, overflow to infinity, ties to even", () => {
  assert.equal(f32ToF16Bits(1), 0x3c00);
  assert.equal(f32ToF16Bits(65504), 0x7bff);
  assert.equal(f32ToF16Bits(70000), 0x7c00);
  assert.equal(f32ToF16Bits(2 ** -24), 0x0001);
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00);
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02);
  const xs = new Float32Array([0.5, -2, 2 ** -14, 2 ** -20]);
  assert.deepEqual([...f16ToF32(f32ToF16(xs))], [...xs]);
});

test("fp8 e4m3fn: table of exact values, subnormals, max, saturation, ties to even", () => {
  const table: [number, number][] = [
    [0, 0x00],
    [1, 0x38],
    [-1, 0xb8],
    [448, 0x7e],
    [-448, 0xfe],
    [1000, 0x7e],
    [-1e9, 0xfe],
    [2 ** -9, 0x01],
    [7 * 2 ** -9, 0x07],
    [2 ** -6, 0x08],
    [1.125, 0x39],
    [240, 0x77],
    [0.5, 0x30],
    // halfway between 1 (0x38, even) and 1.125 (0x39): to 0x38; between 1.125 and 1.25: to 1.25 (0x3a)
    [1.0625, 0x38],
    [1.1875, 0x3a],
    // halfway between the two smallest subnormals 2^-9 (0x01) and 2^-8 (0x02): to 0x02
    [1.5 * 2 ** -9, 0x02],
    [0.5 * 2 ** -9, 0x00],
    // between 416 (0x7d) and 448 (0x7e): 432 ties to even 448
    [432, 0x7e],
    [420, 0x7d],
  ];
  for (const [x, code] of table) {
    assert.equal(f32ToFp8e4m3(x), code, `encode ${x}`);
  }
  assert.equal(fp8e4m3ToF32(0x7e), 448);
  assert.equal(fp8e4m3ToF32(0x01), 2 ** -9);
  assert.equal(fp8e4m3ToF32(0x08), 2 ** -6);
  assert.ok(Number.isNaN(fp8e4m3ToF32(0x7f)));
  assert.equal(f32ToFp8e4m3(NaN), 0x7f);
  // every finite code decodes and re-encodes to itself
  for (let c = 0; c < 256; c++) {
    if ((c & 0x7f) === 0x7f) continue;
    const v = fp8e4m3ToF32(c);
    if (v === 0) continue;
    assert.equal(f32ToFp8e4m3(v), c, `code ${c}`);
  }
});

/**
 * NVFP4 and FP8_BLOCK round-to-nearest against values derived by hand from the definitions
 * (compressed-tensors' calculate_qparams / generate_gparam / cast_to_fp4 / pack_fp4_to_uint8),
 * packing round trips, and GPTQ against RTN on the Hessian-weighted error.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { f32ToFp4e2m1, fp4e2m1ToF32 } from "../../src/engine/dtype.js";
import { quantizedLinearTensors } from "../../src/export/compressed-tensors.js";
import { gptqQuantize, rtnQuantize } from "../../src/quantization/gptq.js";
import { packFp4, unpackFp4 } from "../../src/quantization/pack.js";
import { F32_EPS, dequantize, mxfp4Exponent, nvfp4GlobalScale } from "../../src/quantization/params.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { randn } from "../rand.js";

const NVFP4 = resolveScheme("NVFP4A16").weights;
const BLOCK = resolveScheme("FP8_BLOCK").weights;

test("FP4 E2M1 rounding: nearest, ties to the even mantissa, saturating, negative values keep the sign bit", () => {
  const cases: [number, number][] = [
    [0, 0],
    [0.25, 0], // tie between 0 and 0.5: 0
    [0.2500001, 1],
    [0.75, 2], // tie between 0.5 and 1: 1
    [1.25, 2], // tie between 1 and 1.5: 1
    [1.75, 4], // tie between 1.5 and 2: 2
    [2.5, 4], // tie between 2 and 3: 2
    [3.5, 6], // tie between 3 and 4: 4
    [5, 6], // tie between 4 and 6: 4
    [5.0001, 7],
    [100, 7],
    [-0.1, 8], // rounds to -0: sign bit set, as torch.sign(x) * 0 then signbit
    [-3, 13],
    [-6, 15],
  ];
  for (const [x, code] of cases) assert.equal(f32ToFp4e2m1(x), code, `${x}`);
  assert.deepEqual([...Array(16).keys()].map(fp4e2m1ToF32), [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6]);
});

test("NVFP4 RTN: global scale, FP8 group scales, codes and packed bytes exactly as derived by hand", () => {
  // row 0: group 0 has absmax 6, group 1 is all zeros; row 1: groups of absmax 3 and 5
  const g0 = [6, -3, 1.5, 0.75, 0.25, -0.25, 0.3, -5, 2.5, 3.5, 1.25, 1.75, 0, -0.1, 4.5, -6];
  const r1g0 = [3, 0.2, -0.2, 0.4, 1, -1.3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
  const r1g1 = [5, 1, -2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
  const W = Float32Array.from([...g0, ...new Array(16).fill(0), ...r1g0, ...r1g1]);
  const q = rtnQuantize(W, 2, 32, NVFP4, "F32", "w");
  // global = 448 * 6 / absmax(W) = 2688 / 6 = 448
  const nv = q.params.nvfp4;
  assert.ok(nv);
  assert.deepEqual([...nv.globalScale], [448, 448]);
  // group scales: FP8(448 * absmax / 6): 448; 0 -> 0.125 (FP8 eps); 448 * 0.5 = 224; 448 * 5/6 = 373.33 -> 384 (FP8 neighbours 352, 384)
  assert.deepEqual([...nv.groupScale], [448, 0.125, 224, 384]);
  // a code multiplies group scale / global scale
  assert.deepEqual([...q.params.scale], [1, Math.fround(0.125 / 448), 0.5, Math.fround(384 / 448)]);
  const codes = [...q.codes];
  // row 0 group 0 at scale 1: 6, -3, 1.5, 0.75->1, 0.25->0, -0.25->-0, 0.3->0.5, -5->-4, 2.5->2, 3.5->4, 1.25->1, 1.75->2, 0, -0.1->-0, 4.5->4, -6
  assert.deepEqual(codes.slice(0, 16), [7, 13, 3, 2, 0, 8, 1, 14, 4, 6, 2, 4, 0, 8, 6, 15]);
  assert.deepEqual(codes.slice(16, 32), new Array(16).fill(0));
  // row 1 group 0 at scale 0.5: 6, 0.4->0.5, -0.4->-0.5, 0.8->1, 2, -2.6->-3, zeros
  assert.deepEqual(codes.slice(32, 48), [7, 1, 9, 2, 4, 13, ...new Array(10).fill(0)]);
  // row 1 group 1 at scale 6/7: 5.833->6, 1.1667->1, -2.333->-2
  assert.deepEqual(codes.slice(48, 51), [7, 2, 12]);
  const tensors = quantizedLinearTensors("w", q, "nvfp4-pack-quantized", "F32", 100);
  const by = new Map(tensors.map((t) => [t.name, t]));
  const packed = by.get("w.weight_packed");
  assert.equal(packed?.dtype, "U8");
  assert.deepEqual(packed?.shape, [2, 16]);
  // even column in the low nibble: (7, 13) -> 0xd7, (3, 2) -> 0x23
  assert.deepEqual([...(packed?.bytes ?? []).slice(0, 2)], [0xd7, 0x23]);
  const scale = by.get("w.weight_scale");
  assert.equal(scale?.dtype, "F8_E4M3");
  // 448 = 0x7e, 0.125 = 2^-3 (exponent 4, mantissa 0) = 0x20, 224 = 0x76, 384 = 0x7c
  assert.deepEqual([...(scale?.bytes ?? [])], [0x7e, 0x20, 0x76, 0x7c]);
  assert.deepEqual([...new Float32Array((by.get("w.weight_global_scale")?.bytes ?? new Uint8Array(4)).slice().buffer)], [448]);
  assert.deepEqual([...new Float32Array((by.get("w.input_global_scale")?.bytes ?? new Uint8Array(4)).slice().buffer)], [100]);
  // the dequantized weight: value times effective scale, every value finite
  const d = dequantize(q);
  assert.deepEqual([...d.slice(0, 4)], [6, -3, 1.5, 1]);
  assert.ok(d.every(Number.isFinite));
});

test("NVFP4 global scale: bf16 for a bf16 model, 1 for an all-zero weight; an all-zero weight quantizes without NaN", () => {
  assert.equal(nvfp4GlobalScale(6, "F32"), 448);
  // 2688 / 0.7 = 3840.0002 in float32, 3840 in bf16
  assert.equal(nvfp4GlobalScale(0.7, "BF16"), 3840);
  assert.equal(nvfp4GlobalScale(0, "BF16"), 1);
  const q = rtnQuantize(new Float32Array(32), 1, 32, NVFP4, "BF16", "zeros");
  assert.deepEqual([...(q.params.nvfp4?.groupScale ?? [])], [0.125, 0.125]);
  assert.ok(dequantize(q).every((v) => v === 0));
});

test("MXFP4 RTN: power-of-two E8M0 scales and codes exactly as derived by hand", () => {
  // 6 = 1.5 * 2^2: exponent 2, minus FP4's 2, biased: 127 (scale 1); 7 = 1.75 * 2^2 rounds up to 2^3: 128 (scale 2)
  assert.deepEqual([6, 7, 0.1, 0].map(mxfp4Exponent), [127, 128, 121, 0]);
  const MX = resolveScheme("MXFP4A16").weights;
  const W = Float32Array.from([7, 3, -1, 0.5, 0.1, ...new Array(27).fill(0), ...new Array(32).fill(0)]);
  const q = rtnQuantize(W, 1, 64, MX, "BF16", "w");
  assert.deepEqual([...q.params.scale], [2, 2 ** -127]);
  // at scale 2: 3.5 -> 4, 1.5, -0.5, 0.25 -> 0, 0.05 -> 0
  assert.deepEqual([...q.codes.slice(0, 5)], [6, 3, 9, 0, 0]);
  const t = quantizedLinearTensors("w", q, "mxfp4-pack-quantized", "BF16");
  assert.deepEqual(
    t.map((x) => [x.name, x.dtype, x.shape.join("x")]),
    [
      ["w.weight_packed", "U8", "1x32"],
      ["w.weight_scale", "U8", "1x2"],
    ],
  );
  assert.deepEqual([...(t[1]?.bytes ?? [])], [128, 0]);
  assert.deepEqual([...dequantize(q).slice(0, 5)], [8, 3, -1, 0, 0]);
});

test("NVFP4 packing round trip; an odd column count is refused", () => {
  const codes = Uint8Array.from({ length: 6 * 32 }, (_, i) => (i * 7) % 16);
  assert.deepEqual(unpackFp4(packFp4(codes, 6, 32), 6, 32), codes);
  assert.throws(() => packFp4(new Uint8Array(3), 1, 3), /even number of columns/);
});

test("FP8_BLOCK RTN: one scale per 128 x 128 block, edge blocks smaller, an all-zero block NaN-free", () => {
  const out = 130;
  const inF = 130;
  const W = new Float32Array(out * inF);
  W[5 * inF + 7] = 448; // block (0, 0): absmax 448 -> scale 1
  W[3 * inF + 129] = -4.5; // block (0, 1), 128 x 2: absmax 4.5 -> scale 4.5 / 448
  // block (1, 0), 2 x 128: all zero -> float32 eps
  W[129 * inF + 128] = -896; // block (1, 1), 2 x 2: scale 2, code -448 = 0xfe
  W[128 * inF + 129] = 3; // 3 / 2 = 1.5: e4m3 exactly (0x3c)
  const q = rtnQuantize(W, out, inF, BLOCK, "F32", "w");
  const t = quantizedLinearTensors("w", q, "float-quantized", "F32");
  const scale = t.find((x) => x.name === "w.weight_scale");
  assert.deepEqual(scale?.shape, [2, 2]);
  assert.deepEqual([...new Float32Array((scale?.bytes ?? new Uint8Array()).slice().buffer)], [1, Math.fround(4.5 / 448), F32_EPS, 2]);
  assert.equal(q.codes[5 * inF + 7], 0x7e); // 448
  assert.equal(q.codes[3 * inF + 129], 0xfe); // -4.5 / (4.5 / 448) = -448
  assert.equal(q.codes[129 * inF + 128], 0xfe);
  assert.equal(q.codes[128 * inF + 129], 0x3c);
  assert.equal(q.codes[0], 0);
  assert.ok(dequantize(q).every(Number.isFinite));
  assert.equal(dequantize(q)[129 * inF + 128], -896);
});

/** tr((W - Q) H (W - Q)^T) / 2: the error GPTQ minimises. */
function hessianError(W: Float32Array, Q: Float32Array, H: Float32Array, out: number, inF: number): number {
  let total = 0;
  for (let r = 0; r < out; r++) {
    for (let i = 0; i < inF; i++) {
      const di = (W[r * inF + i] as number) - (Q[r * inF + i] as number);
      if (di === 0) continue;
      for (let j = 0; j < inF; j++) total += di * (H[i * inF + j] as number) * ((W[r * inF + j] as number) - (Q[r * inF + j] as number));
    }
  }
  return total / 2;
}

for (const [name, args] of [
  ["NVFP4", NVFP4],
  ["FP8_BLOCK", BLOCK],
] as const) {
  test(`${name} GPTQ: lower Hessian-weighted error than RTN with the same scales`, async () => {
    const out = 48;
    const inF = 160;
    const W = randn([out, inF], 11, 0.05).data;
    // correlated inputs: x = z A, so H = 2 A^T Z^T Z A has large off-diagonal terms
    const Z = randn([512, inF], 12).data;
    const A = randn([inF, inF], 13, 0.2).data;
    for (let i = 0; i < inF; i++) A[i * inF + i] = (A[i * inF + i] as number) + 1;
    const X = new Float32Array(512 * inF);
    for (let n = 0; n < 512; n++)
      for (let k = 0; k < inF; k++) {
        const z = Z[n * inF + k] as number;
        for (let j = 0; j < inF; j++) X[n * inF + j] = (X[n * inF + j] as number) + z * (A[k * inF + j] as number);
      }
    const H = new Float32Array(inF * inF);
    for (let n = 0; n < 512; n++)
      for (let i = 0; i < inF; i++)
        for (let j = 0; j < inF; j++)
          H[i * inF + j] = (H[i * inF + j] as number) + 2 * (X[n * inF + i] as number) * (X[n * inF + j] as number);
    const rtn = rtnQuantize(W, out, inF, args, "BF16", name);
    const gptq = await gptqQuantize(W, out, inF, H, args, "BF16", name);
    assert.deepEqual(gptq.weight.params.scale, rtn.params.scale, "scales fixed from the original weight");
    const eR = hessianError(W, dequantize(rtn), H, out, inF);
    const eG = hessianError(W, gptq.dequantized, H, out, inF);
    assert.ok(eG < 0.8 * eR, `GPTQ ${eG} vs RTN ${eR}`);
  });
}

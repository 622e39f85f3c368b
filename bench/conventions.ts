/**
 * `npm run bench:conventions`: how far moecal's round-to-nearest bytes are from what
 * compressed-tensors' own arithmetic gives on the bundled bf16 model. The library computes on the
 * weight's dtype (torch rounds every bf16 operation to bf16): `x / scale` in bf16, and the
 * asymmetric zero point `qmin - min / scale` in bf16; moecal divides in float32 and derives the
 * zero point from the stored bf16 scale. Prints the share of codes and zero points that differ and
 * the ratio of squared weight errors (library / moecal). Read in compressed-tensors at
 * ac8e2ba82f4e0d5eaa40069f8fc642738f124cd4 (helpers.py `calculate_qparams`, forward_helpers.py `_quantize`).
 */
import { roundToBf16 } from "../src/engine/dtype.js";
import { Checkpoint } from "../src/io/checkpoint.js";
import { BUNDLED_MODEL } from "../src/paths.js";
import { intRange, roundHalfEven } from "../src/quantization/params.js";

const ck = Checkpoint.open(BUNDLED_MODEL);
const b = roundToBf16;
const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));

for (const [bits, sym] of [
  [4, true],
  [8, true],
  [4, false],
] as const) {
  const g = 32;
  const { qmin, qmax } = intRange(bits);
  const range = qmax - qmin;
  let codes = 0,
    diff = 0,
    groups = 0,
    zpDiff = 0,
    errLib = 0,
    errOurs = 0;
  for (const n of ck.names().filter((x) => /proj\.weight$/.test(x))) {
    const t = ck.readF32(n);
    const [out, inF] = t.shape as [number, number];
    for (let r = 0; r < out; r++) {
      for (let g0 = 0; g0 < inF; g0 += g) {
        let mn = 0,
          mx = 0;
        for (let c = g0; c < g0 + g; c++) {
          const w = t.data[r * inF + c] as number;
          mn = Math.min(mn, w);
          mx = Math.max(mx, w);
        }
        let sLib: number,
          s: number,
          zLib = 0,
          z = 0;
        if (sym) {
          sLib = b(Math.max(-mn, mx) / b(range / 2));
          s = b(Math.fround(Math.max(-mn, mx) / (range / 2)));
        } else {
          sLib = b(b(mx - mn) / range);
          s = b(Math.fround((mx - mn) / range));
          zLib = clamp(roundHalfEven(b(qmin - b(mn / sLib))), qmin, qmax);
          z = clamp(roundHalfEven(qmin - mn / s), qmin, qmax);
        }
        if (sLib === 0) sLib = 2 ** -7;
        if (s === 0) s = 2 ** -7;
        groups++;
        if (zLib !== z) zpDiff++;
        for (let c = g0; c < g0 + g; c++) {
          const w = t.data[r * inF + c] as number;
          const qLib = clamp(roundHalfEven(b(b(w / sLib) + zLib)), qmin, qmax);
          const q = clamp(roundHalfEven(Math.fround(w / s)) + z, qmin, qmax);
          codes++;
          if (q !== qLib) diff++;
          errLib += ((qLib - zLib) * sLib - w) ** 2;
          errOurs += ((q - z) * s - w) ** 2;
        }
      }
    }
  }
  console.log(
    `int${bits} ${sym ? "symmetric" : "asymmetric"} group ${g}: ${((100 * diff) / codes).toFixed(2)}% of ${codes} codes differ; zero points differ in ${((100 * zpDiff) / groups).toFixed(2)}% of ${groups} groups; squared weight error library / moecal ${(errLib / errOurs).toFixed(4)}`,
  );
}

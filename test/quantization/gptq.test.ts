import { test } from "node:test";
import assert from "node:assert/strict";
import { gptqQuantize, rtnQuantize } from "../../src/quantization/gptq.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { golden, goldenInts, assertIntsEqual } from "../helpers.js";
import { rawToInts } from "../../src/io/safetensors.js";

const g = golden("gptq-layer1-expert0-gate_proj.safetensors");
const W = g.readF32("weight").data;
const H = g.readF32("H").data;
const [out, inF] = g.info("weight").shape as [number, number];
const scaleOf = (name: string): Float32Array => g.readF32(name).data;

test("RTN int4 symmetric group 32: codes and bf16 scales exact", () => {
  const args = resolveScheme("W4A16", { groupSize: 32 }).weights;
  const q = rtnQuantize(W, out, inF, args, "BF16", "gate_proj");
  assertIntsEqual("rtn.q", q.codes, rawToInts(g.readRaw("rtn.q"), "rtn.q"));
  assertIntsEqual("rtn.scale", q.params.scale, scaleOf("rtn.scale"));
});

for (const actorder of ["none", "static"] as const) {
  test(`GPTQ (actorder ${actorder}): scales exact, at least 99.5% of codes equal to the reference`, async () => {
    const args = resolveScheme("W4A16", { groupSize: 32, actorder: actorder === "none" ? null : "static" }).weights;
    const r = await gptqQuantize(W, out, inF, H, args, "BF16", "gate_proj", { dampening: 0.01, blockSize: 128 });
    assertIntsEqual(`gptq.${actorder}.scale`, r.weight.params.scale, scaleOf(`gptq.${actorder}.scale`));
    const ref = goldenInts(g, `gptq.${actorder}.q`);
    let same = 0;
    ref.forEach((v, i) => (same += r.weight.codes[i] === v ? 1 : 0));
    const frac = same / ref.length;
    assert.ok(frac >= 0.995, `gptq.${actorder}.q: only ${(frac * 100).toFixed(3)}% of ${ref.length} codes match`);
    assert.ok(r.loss > 0 && Number.isFinite(r.loss));
  });
}

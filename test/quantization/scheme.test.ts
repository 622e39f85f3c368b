import { test } from "node:test";
import assert from "node:assert/strict";
import { matchesAny, quantizationConfig, resolveScheme } from "../../src/quantization/scheme.js";
import { computeQParams, quantizeInt, quantizeWithParams, roundHalfEven } from "../../src/quantization/params.js";
import { AFMOE_DEFAULT_IGNORE } from "../../src/models/afmoe/index.js";
import { UsageError } from "../../src/errors.js";

test("ignore matching: full names, and re: patterns anchored at the start (Python re.match)", () => {
  assert.ok(matchesAny("lm_head", AFMOE_DEFAULT_IGNORE));
  assert.ok(matchesAny("model.layers.7.mlp.router.gate", AFMOE_DEFAULT_IGNORE));
  assert.ok(!matchesAny("model.layers.7.mlp.experts.0.gate_proj", AFMOE_DEFAULT_IGNORE));
  assert.ok(!matchesAny("model.layers.7.mlp.shared_experts.gate_proj", AFMOE_DEFAULT_IGNORE));
  assert.ok(matchesAny("model.layers.0.mlp.up_proj", ["re:^model\\.layers\\.0\\.mlp\\..*"]));
  assert.ok(!matchesAny("xmodel.layers.0.mlp.up_proj", ["re:model\\.layers\\.0\\."]));
  assert.ok(!matchesAny("lm_head_2", ["lm_head"]));
});

test("presets and overrides; unknown scheme and inapplicable group size are usage errors", () => {
  const w4 = resolveScheme("w4a16", { groupSize: 32 });
  assert.equal(w4.name, "W4A16");
  assert.equal(w4.weights.groupSize, 32);
  assert.equal(w4.format, "pack-quantized");
  assert.equal(resolveScheme("W8A8").inputActivations?.strategy, "token");
  assert.equal(resolveScheme("FP8").inputActivations?.dynamic, false);
  assert.throws(
    () => resolveScheme("W3A16"),
    (e: unknown) => e instanceof UsageError && /unknown scheme "W3A16"/.test(e.message),
  );
  assert.throws(() => resolveScheme("FP8_DYNAMIC", { groupSize: 32 }), /a group size does not apply/);
});

test("quantization_config for W8A8 fills input_activations", () => {
  const qc = quantizationConfig(resolveScheme("W8A8"), ["lm_head"], null) as {
    config_groups: { group_0: { input_activations: Record<string, unknown>; format: string } };
  };
  assert.equal(qc.config_groups.group_0.format, "int-quantized");
  assert.deepEqual(qc.config_groups.group_0.input_activations, {
    actorder: null,
    block_structure: null,
    dynamic: true,
    group_size: null,
    num_bits: 8,
    observer: null,
    observer_kwargs: {},
    strategy: "token",
    symmetric: true,
    type: "int",
  });
});

test("min-max parameters: symmetric absmax/7.5, asymmetric zero point, zero groups get eps, per-tensor shares one scale", () => {
  const W = Float32Array.from([0.75, -1.5, 0, 0, 3, 1]);
  const sym = computeQParams(W, 3, 2, resolveScheme("W4A16", { groupSize: 2 }).weights, "F32", "w");
  assert.deepEqual([...sym.scale], [0.2, 1.1920928955078125e-7, 0.4].map(Math.fround));
  const asym = computeQParams(W, 3, 2, resolveScheme("W4A16_ASYM", { groupSize: 2 }).weights, "F32", "w");
  assert.equal(asym.scale[0], Math.fround(2.25 / 15));
  assert.equal(asym.zeroPoint?.[0], Math.min(7, roundHalfEven(-8 + 1.5 / Math.fround(2.25 / 15))));
  const fp8t = computeQParams(W, 3, 2, resolveScheme("FP8").weights, "F32", "w");
  assert.deepEqual([...fp8t.scale], [3 / 448, 3 / 448, 3 / 448].map(Math.fround));
  assert.throws(
    () => computeQParams(W, 2, 3, resolveScheme("W4A16", { groupSize: 2 }).weights, "F32", "m.x"),
    /m.x: group size 2 does not divide the input size 3/,
  );
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(-3.5), -4);
  assert.equal(roundHalfEven(1.4999), 1);
});

test("quantizeWithParams equals quantizeInt value for value (halves to even, clamping, zero points, values past 2^31)", () => {
  const out = 3;
  const inF = 64;
  const W = Float32Array.from({ length: out * inF }, (_, i) => (i % 9 === 0 ? (i % 2 ? 2.5 : -3.5) : Math.sin(i * 1.3) * 7));
  W[5] = 3e9;
  W[6] = -3e9;
  const args = resolveScheme("W4A16_ASYM", { groupSize: 16 }).weights;
  const groups = inF / 16;
  const p = {
    groups,
    groupSize: 16,
    scale: Float32Array.from({ length: out * groups }, (_, g) => (g % 3 === 0 ? 1 : 0.37 + g * 0.01)),
    zeroPoint: Int32Array.from({ length: out * groups }, (_, g) => (g % 4) - 2),
  };
  const codes = quantizeWithParams(W, out, inF, args, p);
  for (let r = 0; r < out; r++)
    for (let c = 0; c < inF; c++) {
      const gi = r * groups + Math.floor(c / 16);
      const want = quantizeInt(W[r * inF + c] as number, p.scale[gi] as number, p.zeroPoint[gi] as number, -8, 7);
      assert.equal(codes[r * inF + c], want, `row ${r} column ${c}`);
    }
});

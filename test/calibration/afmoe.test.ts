import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../src/engine/tensor.js";
import type { AfmoeMoE } from "../../src/models/afmoe/index.js";
import { CalibrationAfmoeMoE } from "../../src/calibration/afmoe.js";
import { attachHessianObservers } from "../../src/calibration/observers.js";
import { TINY, assertClose, assertIntsEqual, golden, goldenInts, openAfmoe } from "../helpers.js";

const g = golden("moe-layer1.safetensors");
const x = g.readF32("x");
const { model, config } = openAfmoe(TINY);
const moe = model.getSubmodule("model.layers.1.mlp") as AfmoeMoE;

test("router of layer 1: selected experts exact, top scores within 1e-6", async () => {
  const { topScores, selectedExperts } = await moe.router.call({ hidden: x, expertBias: moe.expert_bias });
  assertIntsEqual("selected_experts", selectedExperts, goldenInts(g, "selected_experts"));
  assertClose("top_scores", topScores, g.readF32("top_scores"), 1e-6);
  const counts = new Array<number>(config.numExperts).fill(0);
  for (const e of selectedExperts) counts[e] = (counts[e] as number) + 1;
  assertIntsEqual("routed_counts", counts, goldenInts(g, "routed_counts"));
});

test("original AfmoeMoE block reproduces out_original (rel err <= 1e-6)", async () => {
  assertClose("out_original", await moe.call(x), g.readF32("out_original"), 1e-6);
});

for (const [mode, fastPath] of [
  ["all", true],
  ["all", false],
  ["routed", false],
] as const) {
  test(`CalibrationAfmoeMoE (${mode}${mode === "all" ? (fastPath ? ", fast path" : ", per-expert path") : ""}): output and every expert Linear's Hessian and row count match the seed`, async () => {
    const calib = new CalibrationAfmoeMoE(moe, config, { calibrateAllExperts: mode === "all", fastPath });
    const obs = attachHessianObservers(calib, (name) => /^experts\.\d+\.(gate_proj|up_proj|down_proj)$/.test(name));
    try {
      const out = await calib.call(x);
      assertClose(`out_calib_${mode}`, out, g.readF32(`out_calib_${mode}`), 1e-6);
      for (let e = 0; e < config.numExperts; e++) {
        for (const p of ["gate_proj", "down_proj"]) {
          const s = obs.stats.get(`experts.${e}.${p}`);
          assert.ok(s, `experts.${e}.${p} observed`);
          assertClose(`${mode}.experts.${e}.${p}.H`, s.H, g.readF32(`${mode}.experts.${e}.${p}.H`), 1e-5);
          assert.equal(s.rows, goldenInts(g, `${mode}.experts.${e}.${p}.tokens`)[0], `${mode}.experts.${e}.${p}.tokens`);
        }
        // up_proj sees exactly gate_proj's rows
        const up = obs.stats.get(`experts.${e}.up_proj`);
        const gate = obs.stats.get(`experts.${e}.gate_proj`);
        assert.equal(up?.rows, gate?.rows);
        assert.deepEqual(up?.H, gate?.H);
      }
    } finally {
      obs.remove();
    }
  });
}

test("the calibration module holds the original's objects, not copies", () => {
  const calib = new CalibrationAfmoeMoE(moe, config, { calibrateAllExperts: true });
  assert.equal(calib.router, moe.router);
  assert.equal(calib.experts, moe.experts);
  assert.equal(calib.shared_experts, moe.shared_experts);
  assert.equal(calib.parameter("expert_bias"), moe.parameter("expert_bias"));
  assert.equal(calib.isPermanent, false);
  assert.equal(calib.restore(moe), moe);
});

test("routed-only mode still calls an expert that has no tokens, with an empty batch", async () => {
  const calib = new CalibrationAfmoeMoE(moe, config, { calibrateAllExperts: false });
  // one token: only top-k experts are routed, every other expert is idle
  const one = x.reshape([192, 128]);
  const token = one.data.slice(0, 128);
  const { selectedExperts } = await moe.router.call({ hidden: new Tensor(token, [1, 1, 128]), expertBias: moe.expert_bias });
  const idle = [...Array(config.numExperts).keys()].find((e) => !selectedExperts.includes(e)) as number;
  const calls: number[] = [];
  const remove = calib.experts.at(idle).registerForwardPreHook((_m, input) => void calls.push(input.dim(0)));
  const busy = selectedExperts[0] as number;
  const busyCalls: number[] = [];
  const removeBusy = calib.experts.at(busy).registerForwardPreHook((_m, input) => void busyCalls.push(input.dim(0)));
  await calib.call(new Tensor(token, [1, 1, 128]));
  remove();
  removeBusy();
  assert.deepEqual(calls, [0]);
  assert.deepEqual(busyCalls, [1]);
});

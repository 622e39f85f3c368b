import { test } from "node:test";
import assert from "node:assert/strict";
import { AfmoeMoE } from "../../src/models/afmoe/index.js";
import { withMoeCalibration } from "../../src/calibration/context.js";
import { CalibrationAfmoeMoE } from "../../src/calibration/afmoe.js";
import type { CalibrationModuleFactory, MoECalibrationModule } from "../../src/calibration/module.js";
import { MOE_CALIBRATION_REGISTRY, standardizeClassName } from "../../src/calibration/registry.js";
import { type AnyModule, Module } from "../../src/nn/module.js";
import type { Tensor } from "../../src/engine/tensor.js";
import { UsageError } from "../../src/errors.js";
import { TINY, assertClose, golden, goldenInts, openAfmoe } from "../helpers.js";

const { model } = openAfmoe(TINY);
const g = golden("forward.safetensors");
const ids = { ids: Int32Array.from(goldenInts(g, "input_ids")), shape: [2, 96] };
const moeNames = ["model.layers.1.mlp", "model.layers.2.mlp", "model.layers.3.mlp"];
const originals = () => moeNames.map((n) => model.getSubmodule(n));

test("registry keys are standardised class names", () => {
  assert.equal(standardizeClassName("AfmoeMoE"), "afmoemoe");
  assert.equal(standardizeClassName("Qwen3_Moe Block"), "qwen3-moe-block");
  assert.ok(MOE_CALIBRATION_REGISTRY.has("afmoemoe"));
});

for (const calibrateAllExperts of [true, false]) {
  test(`whole-model logits inside the context equal those outside (calibrateAllExperts=${calibrateAllExperts})`, async () => {
    const before = originals();
    const outside = await model.call({ ids });
    const inside = await withMoeCalibration(model, { calibrateAllExperts }, async (m) => {
      for (const n of moeNames) assert.ok(m.getSubmodule(n) instanceof CalibrationAfmoeMoE, `${n} swapped`);
      return m.call({ ids });
    });
    assertClose("logits inside vs outside", inside.logits, outside.logits, 1e-6);
    assert.deepEqual(originals(), before);
  });
}

test("originals are back after the callback throws", async () => {
  const before = originals();
  await assert.rejects(
    withMoeCalibration(model, {}, async () => {
      throw new UsageError("boom");
    }),
    /boom/,
  );
  assert.deepEqual(originals(), before);
  assert.ok(before.every((m) => m instanceof AfmoeMoE));
});

test("originals are back when building a replacement fails halfway", async () => {
  const before = originals();
  let built = 0;
  const failing: CalibrationModuleFactory = (original, config, options) => {
    if (++built === 2) throw new UsageError("cannot build the second replacement");
    return new CalibrationAfmoeMoE(original, config as AfmoeMoE["config"], options);
  };
  let ran = false;
  await assert.rejects(
    withMoeCalibration(model, { registry: new Map([["afmoemoe", failing]]) }, async () => {
      ran = true;
    }),
    /second replacement/,
  );
  assert.equal(ran, false);
  assert.equal(built, 2);
  assert.deepEqual(originals(), before);
});

class PermanentBlock extends Module implements MoECalibrationModule {
  readonly className = "PermanentBlock";
  readonly isPermanent = true;
  constructor(private readonly inner: AnyModule) {
    super();
  }
  async forward(x: Tensor): Promise<Tensor> {
    return (this.inner as Module).call(x);
  }
  restore(): AnyModule {
    return this;
  }
}

test("permanent replacements stay after the context", async () => {
  const { model: m2 } = openAfmoe(TINY, { load: false });
  const perm: CalibrationModuleFactory = (original) => new PermanentBlock(original);
  await withMoeCalibration(m2, { registry: new Map([["afmoemoe", perm]]) }, async () => undefined);
  for (const n of moeNames) assert.ok(m2.getSubmodule(n) instanceof PermanentBlock);
});

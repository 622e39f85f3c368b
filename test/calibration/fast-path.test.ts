import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import type { AfmoeMoE } from "../../src/models/afmoe/index.js";
import { CalibrationAfmoeMoE } from "../../src/calibration/afmoe.js";
import { attachHessianObservers, attachInputAbsMax } from "../../src/calibration/observers.js";
import { Linear } from "../../src/nn/layers.js";
import { getEngine } from "../../src/engine/index.js";
import { trackCoverage } from "../../src/calibration/coverage.js";
import { withMoeCalibration } from "../../src/calibration/context.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { TEXT, TINY, assertClose, golden, goldenInts, openAfmoe, tempDir } from "../helpers.js";

const g = golden("moe-layer1.safetensors");
const x = g.readF32("x");
const { model, config } = openAfmoe(TINY);
const moe = model.getSubmodule("model.layers.1.mlp") as AfmoeMoE;

test("fast and per-expert paths agree: block output, every Hessian, row counts and coverage", async () => {
  const results = [];
  for (const fastPath of [true, false]) {
    const calib = new CalibrationAfmoeMoE(moe, config, { calibrateAllExperts: true, fastPath });
    const obs = attachHessianObservers(calib, (n) => n.startsWith("experts."));
    const cov = trackCoverage(model);
    const out = await calib.call(x);
    obs.remove();
    cov.remove();
    results.push({ out, stats: obs.stats, seen: cov.coverage.layers["1"]?.seen });
  }
  const [fast, slow] = results as [(typeof results)[0], (typeof results)[0]];
  assertClose("block output fast vs per-expert", fast.out, slow.out, 1e-6);
  assert.deepEqual(fast.seen, slow.seen);
  for (const [name, s] of slow.stats) {
    const f = fast.stats.get(name);
    assert.ok(f);
    assert.equal(f.rows, s.rows, `${name} rows`);
    assertClose(`${name}.H fast vs per-expert`, f.H, s.H, 1e-5);
  }
  // fast path: every gate/up Linear shares ONE Hessian array
  const shared = new Set([...fast.stats].filter(([n]) => /(gate|up)_proj$/.test(n)).map(([, s]) => s.H));
  assert.equal(shared.size, 1);
});

test("a user's hook on an expert Linear forces the per-expert path and sees that expert's inputs", async () => {
  const calib = new CalibrationAfmoeMoE(moe, config, { calibrateAllExperts: true });
  const seen: number[] = [];
  const lin = calib.experts.at(4).down_proj;
  const remove = lin.registerForwardPreHook((_m, input) => void seen.push(input.dim(0), input.dim(1)));
  const out = await calib.call(x);
  remove();
  assert.deepEqual(seen, [192, config.moeIntermediateSize], "down_proj of expert 4 saw all 192 tokens");
  assertClose("output with a user hook", out, g.readF32("out_calib_all"), 1e-6);
});

test("oneshot on the bundled model: fast and per-expert paths give the same coverage and (>= 99.5%) the same GPTQ codes", async () => {
  const tmp = tempDir("moecal-fast-");
  const common = {
    scheme: "W4A16",
    groupSize: 32,
    numSamples: 4,
    maxSeqLength: 64,
    dataset: path.join(TEXT, "eval-json.jsonl"),
    warn: () => undefined,
  };
  const fast = await oneshot({ ...common, fastPath: true, output: path.join(tmp, "fast") });
  const slow = await oneshot({ ...common, fastPath: false, output: path.join(tmp, "slow") });
  assert.deepEqual(fast.report.coverage, slow.report.coverage);
  const a = Checkpoint.open(path.join(tmp, "fast"));
  const b = Checkpoint.open(path.join(tmp, "slow"));
  let same = 0;
  let total = 0;
  for (const n of a.names().filter((n) => n.endsWith(".weight_packed"))) {
    const wa = new Int32Array(a.readRaw(n).bytes.slice().buffer);
    const wb = new Int32Array(b.readRaw(n).bytes.slice().buffer);
    for (let i = 0; i < wa.length; i++) {
      for (let k = 0; k < 8; k++) {
        same += ((wa[i] as number) >>> (4 * k)) % 16 === ((wb[i] as number) >>> (4 * k)) % 16 ? 1 : 0;
        total++;
      }
    }
  }
  assert.ok(same / total >= 0.995, `${((100 * same) / total).toFixed(3)}% of ${total} codes equal`);
  for (const n of a.names().filter((n) => n.endsWith(".weight_scale"))) {
    assert.ok(Buffer.from(a.readRaw(n).bytes).equals(Buffer.from(b.readRaw(n).bytes)), `${n} equal`);
  }
});

test("whole model inside the context equals outside, with the fast path", async () => {
  const ids = { ids: Int32Array.from(goldenInts(golden("forward.safetensors"), "input_ids")), shape: [2, 96] };
  const outside = await model.call({ ids });
  const obs = attachHessianObservers(model, (n) => n.includes(".experts."));
  const inside = await withMoeCalibration(model, { calibrateAllExperts: true }, (m) => m.call({ ids }));
  obs.remove();
  assertClose("logits", inside.logits, outside.logits, 1e-6);
  assert.ok([...obs.stats.values()].every((s) => s.rows === 192));
});

test("input-magnitude observers (FP8 static, NVFP4) keep the fast path on and see what the per-expert path's hooks see", async () => {
  const results = [];
  for (const fastPath of [true, false]) {
    const calib = new CalibrationAfmoeMoE(moe, config, { calibrateAllExperts: true, fastPath });
    const linears = new Map(calib.namedModules().filter(([n, m]) => m instanceof Linear && n.startsWith("experts.")) as [string, Linear][]);
    const absMax = attachInputAbsMax(linears);
    const engineCalls = getEngine().swigluExpert;
    let fastCalls = 0;
    getEngine().swigluExpert = async (...a: Parameters<typeof engineCalls>) => {
      fastCalls++;
      return engineCalls.apply(getEngine(), a);
    };
    try {
      await calib.call(x);
    } finally {
      getEngine().swigluExpert = engineCalls;
      absMax.remove();
    }
    results.push({ stats: absMax.stats, fastCalls });
  }
  const [fast, slow] = results as [(typeof results)[0], (typeof results)[0]];
  assert.ok(
    fast.fastCalls >= config.numExperts && slow.fastCalls < config.numExperts,
    `engine expert steps: ${fast.fastCalls} (fast) vs ${slow.fastCalls}`,
  );
  for (const [name, s] of slow.stats) {
    const f = fast.stats.get(name);
    assert.ok(f && s.rows > 0, name);
    assert.equal(f.rows, s.rows, `${name} rows`);
    assert.ok(Math.abs(f.absmax - s.absmax) <= 1e-6 * s.absmax, `${name}: absmax ${f.absmax} (fast) vs ${s.absmax}`);
  }
});

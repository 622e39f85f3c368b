import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import type { OneshotReport } from "../../src/pipeline/report.js";
import { TEXT, TINY, relErr, tempDir } from "../helpers.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { compressedTensorsSource, parseQuantizationConfig } from "../../src/io/compressed-tensors.js";
import { UsageError } from "../../src/errors.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";

const tmp = tempDir("moecal-oneshot-");
const ROUTED_EXPERTS_ONLY = ["re:.*self_attn.*", "re:.*shared_experts.*", "re:^model\\.layers\\.0\\.mlp\\..*"];

test("routed-only calibration: experts without tokens fall back to RTN, are warned once per layer and recorded; all-experts needs none", async () => {
  const warnings: string[] = [];
  const common = {
    scheme: "W4A16",
    groupSize: 32,
    numSamples: 2,
    maxSeqLength: 32,
    dataset: path.join(TEXT, "eval-arith.jsonl"),
    ignore: ROUTED_EXPERTS_ONLY,
  };
  const routed = await oneshot({ ...common, calibrateAllExperts: false, output: path.join(tmp, "routed"), warn: (m) => warnings.push(m) });
  const starved = Object.entries(routed.report.coverage.layers).flatMap(([l, c]) =>
    c.seen.flatMap((n, e) => (n === 0 ? [`model.layers.${l}.mlp.experts.${e}`] : [])),
  );
  assert.ok(starved.length > 0, "64 arithmetic tokens leave some expert without a token");
  const expected = starved.flatMap((p) => ["gate_proj", "up_proj", "down_proj"].map((x) => `${p}.${x}`)).sort();
  assert.deepEqual(routed.report.fallbacks.map((f) => f.module).sort(), expected);
  assert.ok(routed.report.fallbacks.every((f) => f.reason === "no-calibration-rows" && f.action === "round-to-nearest"));
  const layersWithFallback = new Set(starved.map((p) => p.split(".")[2]));
  assert.equal(warnings.length, layersWithFallback.size, warnings.join("\n"));
  const saved = JSON.parse(fs.readFileSync(path.join(tmp, "routed", "moecal.json"), "utf8")) as OneshotReport;
  assert.deepEqual(saved.fallbacks, routed.report.fallbacks);
  assert.equal(saved.calibrate_all_experts, false);
  assert.equal(saved.num_samples, 2);
  assert.equal(saved.method, "gptq");
  // the starved experts are still quantized (packed), not zeroed: close to the original weight, as RTN leaves it
  const q = Checkpoint.open(path.join(tmp, "routed"));
  const source = compressedTensorsSource(
    q,
    parseQuantizationConfig(
      JSON.parse(fs.readFileSync(path.join(tmp, "routed", "config.json"), "utf8")).quantization_config,
      "config.json",
    ),
  );
  const original = Checkpoint.open(TINY);
  for (const m of expected) {
    assert.ok(q.has(`${m}.weight_packed`) && q.has(`${m}.weight_scale`), `${m} packed`);
    const w = source.readF32(`${m}.weight`).data;
    const ref = original.readF32(`${m}.weight`).data;
    assert.ok(
      w.some((v) => v !== 0),
      `${m} is not zeroed`,
    );
    assert.ok(relErr(w, ref) < 0.2, `${m}: relative error ${relErr(w, ref)} vs the original weight`);
  }

  const all = await oneshot({ ...common, calibrateAllExperts: true, output: path.join(tmp, "all"), warn: (m) => warnings.push(m) });
  assert.deepEqual(all.report.fallbacks, []);
  for (const c of Object.values(all.report.coverage.layers)) assert.ok(c.seen.every((n) => n === all.report.tokens));
});

test("an explicit group size that does not divide an input size is refused before any work", async () => {
  await assert.rejects(
    oneshot({ scheme: "W4A16", groupSize: 48, numSamples: 1, maxSeqLength: 8, output: path.join(tmp, "bad") }),
    /--group-size 48 does not divide the input size 128 of model.layers.0.self_attn.q_proj/,
  );
  assert.equal(fs.existsSync(path.join(tmp, "bad")), false);
});

test("an ignore list that splits a module vLLM fuses is refused before any work, unless vllmCheck is off; inspect flags the result", async () => {
  const common = { method: "rtn" as const, numSamples: 1, maxSeqLength: 8, warn: () => undefined };
  const out = path.join(tmp, "split");
  await assert.rejects(
    oneshot({ ...common, ignore: ["model.layers.1.self_attn.q_proj", "model.layers.3.mlp.experts.4.up_proj"], output: out }),
    (e: Error) =>
      e instanceof UsageError &&
      /model\.layers\.1\.self_attn\.qkv_proj: vLLM fuses q_proj, k_proj, v_proj/.test(e.message) &&
      /model\.layers\.3\.mlp\.experts: vLLM runs its 48 routed-expert/.test(e.message),
  );
  assert.equal(fs.existsSync(out), false);
  await oneshot({ ...common, ignore: ["model.layers.1.self_attn.q_proj"], vllmCheck: false, output: out });
  const problems = inspectCheckpoint(out).problems;
  assert.deepEqual(problems, [
    "model.layers.1.self_attn.qkv_proj: vLLM fuses q_proj, k_proj, v_proj into one module with one quantization scheme, but unquantized: q_proj; config group 0: k_proj, v_proj",
  ]);
  // whole groups ignored are fine
  await oneshot({
    ...common,
    ignore: ["re:.*self_attn\\.[qkv]_proj$", "re:.*layers\\.2\\.mlp\\.experts\\..*"],
    output: path.join(tmp, "whole"),
    overwrite: true,
  });
  assert.deepEqual(inspectCheckpoint(path.join(tmp, "whole")).problems, []);
});

test("an --ignore entry that matches no Linear is warned about, naming it", async () => {
  const warnings: string[] = [];
  await oneshot({
    method: "rtn",
    numSamples: 1,
    maxSeqLength: 8,
    ignore: ["re:.*self_atn.*", "re:.*self_attn.*", "layers.1.mlp.experts.0.up_proj"],
    output: path.join(tmp, "typo"),
    warn: (m) => warnings.push(m),
  });
  const unmatched = warnings.filter((w) => w.includes("matches no Linear layer"));
  assert.equal(unmatched.length, 2, warnings.join("\n"));
  assert.match(
    unmatched[0] as string,
    /^--ignore re:\.\*self_atn\.\* matches no Linear layer of the model \(names look like model\.layers\.1\.mlp\.experts\.0\.gate_proj;/,
  );
  assert.match(unmatched[1] as string, /^--ignore layers\.1\.mlp\.experts\.0\.up_proj matches no Linear layer/);
});

test("the default group size is halved to fit the bundled model, with a warning", async () => {
  const warnings: string[] = [];
  const r = await oneshot({
    method: "rtn",
    numSamples: 1,
    maxSeqLength: 8,
    output: path.join(tmp, "default"),
    warn: (m) => warnings.push(m),
  });
  assert.equal(r.report.group_size, 64);
  assert.match(warnings[0] ?? "", /group size 128 does not divide the input size 64 .* using group size 64/);
});

/**
 * The data-free path (round-to-nearest without calibration data) writes what the calibrated
 * path writes with --method rtn, byte for byte (every tensor file, the index and config.json), for
 * every scheme it takes and every family; its memory does not grow with the model's depth.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { ROOT, TINY, fixtureCopy, tempDir } from "../helpers.js";
import { MoecalError } from "../../src/errors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { openCheckpoint, sourceQuantization } from "../../src/io/source-format.js";
import { readConfigJson } from "../../src/io/json.js";
import { openModel } from "../../src/models/registry.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";

const tmp = tempDir("moecal-data-free-");
const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
const DATA_FREE = ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16"];
const FAMILIES: [string, string][] = [
  ["afmoe", TINY],
  ...[
    "qwen3_moe",
    "mixtral",
    "glm4_moe",
    "deepseek_v3",
    "deepseek_v3-fp8",
    "minimax_m2",
    "minimax_m2-fp8",
    "qwen3_next",
    "qwen3_5_moe",
  ].map((f) => [f, path.join(ROOT, "test", "fixtures", `tiny-${f}`)] as [string, string]),
];

/** Every file of a folder but moecal.json (which says how the run was made), as bytes. */
function files(dir: string): Map<string, Buffer> {
  return new Map(
    fs
      .readdirSync(dir)
      .filter((f) => f !== "moecal.json" && f !== "coverage.svg")
      .map((f) => [f, fs.readFileSync(path.join(dir, f))]),
  );
}

async function outcome(model: string, scheme: string, out: string, calibrate: boolean): Promise<string | MoecalError> {
  try {
    const r = await oneshot({
      model,
      scheme,
      method: "rtn",
      calibrate,
      numSamples: 2,
      maxSeqLength: 16,
      output: out,
      warn: () => undefined,
    });
    assert.equal(r.report.data_free, !calibrate);
    return r.output;
  } catch (e) {
    if (e instanceof MoecalError) return e;
    throw e;
  }
}

for (const [family, model] of FAMILIES)
  test(`data-free equals the calibrated RTN path byte for byte on ${family}, for ${DATA_FREE.join(", ")}`, async () => {
    for (const scheme of DATA_FREE) {
      const free = await outcome(model, scheme, path.join(tmp, `${family}-${scheme}-free`), false);
      const calibrated = await outcome(model, scheme, path.join(tmp, `${family}-${scheme}-calibrated`), true);
      if (calibrated instanceof MoecalError || free instanceof MoecalError) {
        // a scheme the model's shapes refuse is refused alike, before any work
        assert.equal(String(free), String(calibrated), `${family} ${scheme}`);
        continue;
      }
      const a = files(free);
      const b = files(calibrated);
      assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${family} ${scheme}: files`);
      for (const [f, bytes] of b) assert.ok(bytes.equals(a.get(f) as Buffer), `${family} ${scheme}: ${f} differs`);
      const report = JSON.parse(fs.readFileSync(path.join(free, "moecal.json"), "utf8")) as Record<string, unknown>;
      assert.equal(report.data_free, true);
      assert.equal(report.dataset, null, "no dataset was read");
      assert.deepEqual(report.coverage, { layers: {} }, "no coverage: no data was seen");
      fs.rmSync(free, { recursive: true });
      fs.rmSync(calibrated, { recursive: true });
    }
  });

test("schemes with static activation scales (FP8, NVFP4) and GPTQ keep the calibrated path", async () => {
  for (const [scheme, method] of [
    ["FP8", "rtn"],
    ["NVFP4", "rtn"],
    ["W4A16", "gptq"],
  ] as const) {
    const r = await oneshot({
      scheme,
      method,
      numSamples: 2,
      maxSeqLength: 16,
      output: path.join(tmp, `kept-${scheme}-${method}`),
      warn: () => undefined,
    });
    assert.equal(r.report.data_free, false, `${scheme} ${method}`);
    assert.ok(Object.keys(r.report.coverage.layers).length > 0);
  }
});

/** Peak RSS (MB) of a data-free CLI run with `workers` worker threads on a random model of `layers` layers of one shape. */
function dataFreePeak(layers: number, workers: number): number {
  const model = path.join(tmp, `deep-${layers}`);
  const set = ["hidden_size=512", "num_experts=32", "moe_intermediate_size=256"].flatMap((s) => ["--set", s]);
  if (!fs.existsSync(model))
    assert.equal(spawnSync(process.execPath, [cli, "random-model", "--output", model, "--layers", String(layers), ...set]).status, 0);
  const out = path.join(tmp, `deep-out-${layers}-${workers}`);
  const r = spawnSync(
    process.execPath,
    [cli, "oneshot", "--model", model, "--method", "rtn", "--output", out, "--quiet", "--workers", String(workers)],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /data-free/);
  return Number(/peak RSS (\d+) MB/.exec(r.stdout)?.[1]);
}

test("data-free memory does not hold layers: 6 more layers (25 MB of BF16 weights each, 50 MB in float32) add less than 64 MB on the main thread, 128 MB with 2 workers", () => {
  // holding the 6 extra layers would add 300 MB; what remains is garbage the collector has not
  // freed yet (V8 collects external memory in steps; buffers moved between threads later still)
  for (const [workers, limit] of [
    [0, 64],
    [2, 128],
  ] as const) {
    const two = dataFreePeak(2, workers);
    const eight = dataFreePeak(8, workers);
    assert.ok(eight - two < limit, `${workers} workers: peak RSS ${eight} MB with 8 layers vs ${two} MB with 2`);
  }
});

test("a model_type moecal has no family for is quantized data-free from names and shapes: the same tensors as its known family's run, routers and lm_head ignored, a warning naming the rules; the calibrated path refuses it", async () => {
  const known = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  const unknown = fixtureCopy(known, path.join(tmp, "unknown-moe"));
  const cfg = JSON.parse(fs.readFileSync(path.join(unknown, "config.json"), "utf8")) as Record<string, unknown>;
  fs.writeFileSync(
    path.join(unknown, "config.json"),
    JSON.stringify({ ...cfg, model_type: "some_new_moe", architectures: ["SomeNewMoeForCausalLM"] }),
  );
  for (const scheme of ["W4A16", "NVFP4A16", "FP8_BLOCK"]) {
    const warnings: string[] = [];
    const run = async (model: string, out: string, warn: (m: string) => void): Promise<void> => {
      await oneshot({ model, scheme, method: "rtn", output: out, warn });
    };
    await run(unknown, path.join(tmp, `unknown-${scheme}`), (m) => warnings.push(m));
    await run(known, path.join(tmp, `known-${scheme}`), () => undefined);
    assert.ok(
      warnings.some((w) =>
        /model_type "some_new_moe" is not a family moecal knows; quantizing data-free from tensor names and shapes/.test(w),
      ),
      warnings.join("\n"),
    );
    const a = Checkpoint.open(path.join(tmp, `unknown-${scheme}`));
    const b = Checkpoint.open(path.join(tmp, `known-${scheme}`));
    assert.deepEqual(a.names().sort(), b.names().sort(), scheme);
    for (const n of b.names()) assert.ok(Buffer.from(a.readRaw(n).bytes).equals(Buffer.from(b.readRaw(n).bytes)), `${scheme} ${n}`);
    const ignore = (d: string): string[] =>
      (JSON.parse(fs.readFileSync(path.join(tmp, d, "config.json"), "utf8")) as { quantization_config: { ignore: string[] } })
        .quantization_config.ignore;
    assert.deepEqual(ignore(`unknown-${scheme}`).sort(), [
      "lm_head",
      "model.layers.0.mlp.gate",
      "model.layers.1.mlp.gate",
      "model.layers.2.mlp.gate",
    ]);
  }
  await assert.rejects(
    oneshot({ model: unknown, method: "gptq", output: path.join(tmp, "unknown-gptq"), warn: () => undefined }),
    /unsupported model_type "some_new_moe" .*any other checkpoint is quantized data-free/,
  );
});

test("a compressed-tensors checkpoint as the source (moecal's own W8A16, FP8_BLOCK and NVFP4A16 outputs of Qwen3-MoE): its quantized Linears decoded, requantized to W4A16 data-free byte for byte as the calibrated path does, inspect clean", async () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  for (const source of ["W8A16", "FP8_BLOCK", "NVFP4A16"]) {
    const ct = await outcome(model, source, path.join(tmp, `ct-${source}`), false);
    assert.ok(typeof ct === "string", String(ct));
    // the decoded weight is what the loader (eval's) reads from the same checkpoint
    const decoded = openCheckpoint(ct, sourceQuantization(readConfigJson(ct).json, ct), { decodeQuantized: true });
    const loaded = openModel(ct);
    const name = "model.layers.1.mlp.experts.3.gate_proj.weight";
    assert.deepEqual(decoded.readF32(name).data, loaded.source.readF32(name).data, `${source}: ${name} decoded`);
    assert.ok(!decoded.names().some((n) => /\.(weight_scale|weight_packed|weight_shape|weight_global_scale)$/.test(n)));
    const free = await outcome(ct, "W4A16", path.join(tmp, `ct-${source}-free`), false);
    const calibrated = await outcome(ct, "W4A16", path.join(tmp, `ct-${source}-calibrated`), true);
    assert.ok(typeof free === "string" && typeof calibrated === "string", `${String(free)} ${String(calibrated)}`);
    const a = files(free);
    for (const [f, bytes] of files(calibrated)) assert.ok(bytes.equals(a.get(f) as Buffer), `${source}: ${f} differs`);
    assert.deepEqual(inspectCheckpoint(free).problems, []);
    assert.equal(inspectCheckpoint(free).formats["pack-quantized"], inspectCheckpoint(ct).quantized);
  }
});

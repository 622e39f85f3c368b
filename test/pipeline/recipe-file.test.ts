/**
 * `--recipe FILE` and per-entry methods end to end: an llm-compressor recipe writes what the same
 * recipe on the command line writes; a GPTQ entry beside a round-to-nearest one gives each Linear
 * exactly what a run of its method alone gives it; llm-compressor's own recipes run unchanged or are
 * refused naming what moecal does not implement; a new user's `moecal oneshot --recipe` on the
 * bundled model writes a checkpoint inspect accepts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { UsageError } from "../../src/errors.js";
import { ROOT, cliIn, filesDiffering, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-recipe-file-run-");
const RECIPES = path.join(ROOT, "test", "fixtures", "recipes");
const QWEN = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
const EXPERTS = "re:.*experts\\.\\d+\\..*";
const ATTENTION = "re:.*self_attn\\..*";
const quick = { numSamples: 4, maxSeqLength: 32, warn: () => undefined };

/** Every tensor of an output, by name, as raw bytes. */
function tensors(out: string): Map<string, Buffer> {
  const ck = Checkpoint.open(out);
  return new Map(ck.names().map((n) => [n, Buffer.from(ck.readRaw(n).bytes)]));
}

test("the flagship recipe file (GPTQ NVFP4 experts, round-to-nearest FP8_BLOCK attention) writes what --scheme/--method write; each Linear gets exactly its method's result", async () => {
  const file = path.join(RECIPES, "flagship_nvfp4_fp8_block.yaml");
  const fromFile = (await oneshot({ model: QWEN, recipe: file, output: path.join(tmp, "file"), ...quick })).output;
  const cli = (
    await oneshot({
      model: QWEN,
      scheme: [`${EXPERTS}=NVFP4A16`, `${ATTENTION}=FP8_BLOCK`],
      method: [`${ATTENTION}=rtn`],
      output: path.join(tmp, "cli"),
      ...quick,
    })
  ).output;
  assert.deepEqual(filesDiffering(fromFile, cli), []);
  const report = JSON.parse(fs.readFileSync(path.join(fromFile, "moecal.json"), "utf8"));
  assert.equal(report.method, "mixed");
  assert.deepEqual(
    report.recipe.entries.map((e: { scheme: string; method: string }) => [e.scheme, e.method]),
    [
      ["NVFP4A16", "gptq"],
      ["FP8_BLOCK", "rtn"],
    ],
  );
  assert.equal(report.recipe.file_text, fs.readFileSync(file, "utf8"));
  const cfg = JSON.parse(fs.readFileSync(path.join(fromFile, "config.json"), "utf8")).quantization_config;
  // GPTQModifier sets static column order on every weight strategy; round-to-nearest writes none
  assert.equal(cfg.config_groups.group_0.weights.actorder, "static");
  assert.equal(cfg.config_groups.group_1.weights.actorder, null);
  // attention round-to-nearest: as a run of round-to-nearest alone; layer 0's experts: as GPTQ alone
  const rtn = (await oneshot({ model: QWEN, scheme: [`${ATTENTION}=FP8_BLOCK`], method: "rtn", output: path.join(tmp, "rtn") })).output;
  const gptq = (await oneshot({ model: QWEN, scheme: [`${EXPERTS}=NVFP4A16`], output: path.join(tmp, "gptq"), ...quick })).output;
  const [mixed, r, g] = [tensors(fromFile), tensors(rtn), tensors(gptq)];
  let attention = 0;
  let experts = 0;
  for (const [n, bytes] of mixed) {
    if (/self_attn\.[a-z_]+\.weight/.test(n)) {
      assert.ok(bytes.equals(r.get(n) as Buffer), n);
      attention++;
    }
    if (/^model\.layers\.0\.mlp\.experts\.\d+\..*weight_packed$/.test(n)) {
      assert.ok(bytes.equals(g.get(n) as Buffer), n);
      experts++;
    }
  }
  assert.ok(attention > 0 && experts > 0);
});

test("llm-compressor's FP8 dynamic recipe runs unchanged: the bytes of --scheme FP8_DYNAMIC --method rtn; its ignore patterns that match nothing are said", async () => {
  const warnings: string[] = [];
  const fromFile = (
    await oneshot({
      model: QWEN,
      recipe: path.join(RECIPES, "recipe_fp8_dynamic.yaml"),
      output: path.join(tmp, "fp8-file"),
      warn: (m) => warnings.push(m),
    })
  ).output;
  const cli = (
    await oneshot({ model: QWEN, scheme: "FP8_DYNAMIC", method: "rtn", output: path.join(tmp, "fp8-cli"), warn: () => undefined })
  ).output;
  assert.deepEqual(filesDiffering(fromFile, cli), []);
  assert.ok(
    warnings.some((w) => /the recipe's ignore re:vision_tower\.\* matches no Linear/.test(w)),
    warnings.join("\n"),
  );
});

test("llm-compressor's NVFP4 / FP8 mixed recipe (written for dense models) splits each MoE layer's experts: refused naming the module; with vllmCheck off it runs as written", async () => {
  const file = path.join(RECIPES, "recipe_nvfp4_fp8_mixed.yaml");
  await assert.rejects(
    oneshot({ model: QWEN, recipe: file, output: path.join(tmp, "mixed"), ...quick }),
    (e: unknown) =>
      e instanceof UsageError &&
      /model\.layers\.\d+\.mlp\.experts: vLLM runs its \d+ routed-expert Linear layers as one fused MoE module/.test(e.message),
  );
  const out = (await oneshot({ model: QWEN, recipe: file, vllmCheck: false, output: path.join(tmp, "mixed"), ...quick })).output;
  const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")).quantization_config;
  assert.deepEqual(
    Object.values(cfg.config_groups).map((g) => [(g as { format: string }).format, (g as { targets: string[] }).targets]),
    [
      ["float-quantized", ["re:.*\\.down_proj$"]],
      ["nvfp4-pack-quantized", ["re:.*self_attn\\.(k|o|q|v)_proj$", "re:.*\\.(gate|up)_proj$"]],
    ],
  );
  assert.equal(cfg.format, "mixed-precision");
});

test("a recipe file beside --scheme, --method, --group-size, --actorder or --dampening is refused; as a new user would: moecal oneshot --recipe, then inspect", async () => {
  for (const clash of [{ scheme: "W8A16" }, { method: "rtn" as const }, { groupSize: 64 }, { actorder: null }, { dampening: 0.1 }])
    await assert.rejects(
      oneshot({ model: QWEN, recipe: path.join(RECIPES, "flagship_nvfp4_fp8_block.yaml"), output: path.join(tmp, "clash"), ...clash }),
      (e: unknown) => e instanceof UsageError && new RegExp(`do not pass ${Object.keys(clash)[0]} beside it`).test(e.message),
    );
  const cli = cliIn(tmp);
  cli(
    "oneshot",
    "--recipe",
    path.join(RECIPES, "flagship_nvfp4_fp8_block.yaml"),
    "--num-samples",
    "8",
    "--max-seq-length",
    "64",
    "--quiet",
  );
  assert.match(cli("inspect", "tiny-afmoe-NVFP4A16-FP8_BLOCK"), /no problems found/);
});

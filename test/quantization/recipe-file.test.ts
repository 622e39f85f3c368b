/**
 * llm-compressor recipe files read as llm-compressor resolves them (Recipe.from_dict, the modifiers'
 * resolve_quantization_config): presets and config groups recognized as moecal's schemes, each
 * modifier's method, ignore lists merged, GPTQ settings; every unsupported modifier or field
 * refused with its path in the file.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { readRecipeFile } from "../../src/quantization/recipe-file.js";
import * as moecal from "../../src/index.js";
import { UsageError } from "../../src/errors.js";
import { ROOT, tempDir } from "../helpers.js";

const RECIPES = path.join(ROOT, "test", "fixtures", "recipes");
const tmp = tempDir("moecal-recipe-file-");
let n = 0;
function file(text: string, ext = "yaml"): string {
  const f = path.join(tmp, `r${n++}.${ext}`);
  fs.writeFileSync(f, text);
  return f;
}
const entries = (f: string) =>
  readRecipeFile(f).entries.map((e) => ({
    targets: e.targets,
    scheme: e.scheme.name,
    method: e.method,
    group: e.scheme.weights.groupSize,
    actorder: e.scheme.weights.actorder,
  }));

test("the package exports the recipe reader and parser", () => {
  assert.equal(moecal.readRecipeFile, readRecipeFile);
  assert.equal(moecal.parseRecipe(["re:.*experts.*=NVFP4A16"], {}, ["rtn"]).entries[0]?.method, "rtn");
});

test("llm-compressor's own recipes: FP8 dynamic config groups and the NVFP4 / FP8 mixed one resolve to presets", () => {
  const fp8 = readRecipeFile(path.join(RECIPES, "recipe_fp8_dynamic.yaml"));
  assert.deepEqual(
    fp8.entries.map((e) => [e.targets, e.scheme.name, e.method]),
    [[["Linear"], "FP8_DYNAMIC", "rtn"]],
  );
  assert.deepEqual(fp8.ignore, ["lm_head", "re:vision_tower.*", "re:.*multi_modal_projector.*", "re:.*visual.*", "re:.*vision_model.*"]);
  assert.deepEqual(readRecipeFile(path.join(RECIPES, "recipe_fp8_dynamic.yaml")).given, ["--recipe recipe_fp8_dynamic.yaml"]);
  assert.deepEqual(
    readRecipeFile(path.join(RECIPES, "recipe_nvfp4_fp8_mixed.yaml")).entries.map((e) => [e.targets, e.scheme.name]),
    [
      [["re:.*\\.down_proj$"], "FP8_DYNAMIC"],
      [["re:.*self_attn\\.(k|o|q|v)_proj$", "re:.*\\.(gate|up)_proj$"], "NVFP4"],
    ],
  );
});

test("modifiers: GPTQModifier is GPTQ and QuantizationModifier round-to-nearest; scheme as a preset, a {PRESET: targets} map or config groups; GPTQ settings", () => {
  const r = readRecipeFile(path.join(RECIPES, "flagship_nvfp4_fp8_block.yaml"));
  assert.deepEqual(
    r.entries.map((e) => [e.targets, e.scheme.name, e.method]),
    [
      [["re:.*experts\\.\\d+\\..*"], "NVFP4A16", "gptq"],
      [["re:.*self_attn\\..*"], "FP8_BLOCK", "rtn"],
    ],
  );
  assert.deepEqual(r.gptq, { dampening: 0.01, blockSize: 128 });
  assert.ok(r.text?.includes("GPTQModifier"));
  const map = file(`s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      scheme: {W8A16: ['re:.*self_attn.*'], W4A16: [Linear]}\n`);
  assert.deepEqual(entries(map), [
    { targets: ["re:.*self_attn.*"], scheme: "W8A16", method: "rtn", group: 128, actorder: null },
    { targets: ["Linear"], scheme: "W4A16", method: "rtn", group: 128, actorder: null },
  ]);
  // config groups: compressed-tensors' defaults (int, symmetric, group from group_size) and a resized int group
  const groups = file(
    `quant_stage:\n  quant_modifiers:\n    GPTQModifier:\n      actorder: null\n      config_groups:\n        g:\n          targets: [Linear]\n          weights: {num_bits: 4, group_size: 64}\n`,
  );
  assert.deepEqual(entries(groups), [{ targets: ["Linear"], scheme: "W4A16", method: "gptq", group: 64, actorder: null }]);
  const json = file(JSON.stringify({ a_stage: { b_modifiers: { GPTQModifier: { scheme: "W4A16_ASYM" } } } }), "json");
  assert.deepEqual(entries(json), [{ targets: ["Linear"], scheme: "W4A16_ASYM", method: "gptq", group: 128, actorder: "static" }]);
});

test("refused, naming the field: other modifiers, fields moecal does not implement, schemes that are no preset, conflicts, bad YAML", () => {
  const refused = (f: string, message: RegExp): void =>
    assert.throws(
      () => readRecipeFile(f),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
    );
  refused(path.join(RECIPES, "recipe_gptq_awq.yaml"), /quant_stage\.quant_modifiers\.AWQModifier: moecal does not run AWQModifier/);
  refused(path.join(RECIPES, "recipe_w8a8_static_asym.yaml"), /SmoothQuantModifier: moecal does not run SmoothQuantModifier/);
  refused(
    path.join(RECIPES, "recipe_w4a16_actorder_group.yaml"),
    /GPTQModifier\.config_groups\.group_0\.weights\.actorder: actorder "group" is not supported/,
  );
  const mod = (args: string): string => file(`quant_stage:\n  quant_modifiers:\n    GPTQModifier:\n${args}`);
  refused(
    mod("      scheme: W4A16\n      sequential_targets: [Foo]\n"),
    /GPTQModifier\.sequential_targets: GPTQModifier argument not supported/,
  );
  refused(
    mod("      scheme: W4A16\n      kv_cache_scheme: {num_bits: 8}\n"),
    /GPTQModifier\.kv_cache_scheme: .* is not supported \(only the default\)/,
  );
  refused(mod("      scheme: W4A16\n      config_groups: {}\n"), /give either scheme or config_groups/);
  refused(mod("      targets: [Linear]\n"), /gives neither scheme nor config_groups/);
  refused(mod("      scheme: 4\n"), /scheme must be a preset name or \{PRESET: targets\}/);
  refused(mod("      scheme: W5A16\n"), /GPTQModifier\.scheme: unknown scheme "W5A16"/);
  refused(
    mod("      config_groups:\n        g: {targets: [Linear], weights: {num_bits: 4, strategy: channel, observer: mse}}\n"),
    /config_groups\.g\.weights\.observer: "mse" is not supported/,
  );
  refused(
    mod("      config_groups:\n        g: {targets: [Linear], weights: {num_bits: 3, strategy: channel}}\n"),
    /config_groups\.g: weights int 3-bit symmetric per channel, input activations none is not a scheme moecal implements/,
  );
  refused(
    file(
      "quant_stage:\n  quant_modifiers:\n    GPTQModifier: {scheme: W4A16, dampening_frac: 0.1}\n  other_modifiers:\n    GPTQModifier: {scheme: {W8A16: ['re:x']}, dampening_frac: 0.01}\n",
    ),
    /different dampening_frac \(0\.1, 0\.01\)/,
  );
  refused(
    file("quant_stage:\n  quant_modifiers:\n    QuantizationModifier: {scheme: W4A16}\n    GPTQModifier: {scheme: W8A16}\n"),
    /the target Linear is given twice/,
  );
  refused(file("version: 1.1\nquant_stage: {}\n"), /version: expected a <name>_stage mapping/);
  refused(file("quant_stage:\n  quant_modifiers: [\n"), /not valid YAML/);
  refused(path.join(tmp, "missing.yaml"), /--recipe .*missing\.yaml: cannot read it/);
});

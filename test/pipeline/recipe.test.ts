/**
 * Recipes: several schemes in one checkpoint (`--scheme PATTERN=SCHEME`, repeatable). On every
 * family, a two-group recipe (data-free) and a three-group one (GPTQ) write one config group per
 * scheme, and every Linear of the output, resolved by compressed-tensors' own rule from the written
 * config, carries its group's tensors (the rest unquantized and listed in ignore); moecal.json
 * counts the Linears per entry; inspect finds nothing wrong; the data-free and calibrated paths
 * write the same bytes; overlapping targets follow exact name > regex > class; a fused module split
 * between groups, an entry matching nothing and a malformed entry are refused before any work.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { groupFor, parseQuantizationConfig, requiredSuffixes } from "../../src/io/compressed-tensors.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { parseRecipe, schemeOfLinear } from "../../src/quantization/recipe.js";
import { UsageError } from "../../src/errors.js";
import { ROOT, TINY, cliIn, evalKl, filesDiffering, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-recipe-");
const FAMILIES: [string, string][] = [
  ["afmoe", TINY],
  ...["qwen3_moe", "mixtral", "glm4_moe", "deepseek_v3-fp8", "minimax_m2", "qwen3_next", "qwen3_5_moe"].map(
    (f) => [f, path.join(ROOT, "test", "fixtures", `tiny-${f}`)] as [string, string],
  ),
];
const EXPERTS = "re:.*experts\\.\\d+\\..*";
const ATTENTION = "re:.*self_attn\\..*";
/** attention's output projection: vLLM runs it alone, so it may take its own scheme */
const O_PROJ = "re:.*self_attn\\.o_proj$";

/**
 * Every module of the output resolved by compressed-tensors' rule from its config: a quantized one
 * (it has a weight_scale) must resolve to a group whose tensors it carries; an unquantized Linear
 * (named in ignore) to none, with its plain weight. Returns the quantized modules per group format.
 */
function resolveOutput(out: string): Map<string, string[]> {
  const config = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as { quantization_config: unknown };
  const cfg = parseQuantizationConfig(config.quantization_config, out);
  const ck = Checkpoint.open(out);
  const names = new Set(ck.names());
  const byFormat = new Map<string, string[]>();
  for (const n of names) {
    if (!n.endsWith(".weight_scale")) continue;
    const m = n.slice(0, -".weight_scale".length);
    const g = groupFor(cfg, m);
    assert.ok(g, `${out}: ${m} is quantized but no config group resolves to it`);
    for (const s of requiredSuffixes(g.format, g.weights, g.inputActivations))
      assert.ok(names.has(`${m}.${s}`), `${m}: ${g.format} needs ${s}`);
    byFormat.set(g.format, [...(byFormat.get(g.format) ?? []), m]);
  }
  for (const m of cfg.ignore) {
    assert.equal(groupFor(cfg, m), null, `${m} is ignored`);
    if (names.has(`${m}.weight`)) assert.ok(!names.has(`${m}.weight_scale`), `${m}: ignored, yet quantized`);
  }
  return byFormat;
}

async function run(model: string, scheme: string[], out: string, method: "rtn" | "gptq", calibrate = false): Promise<string> {
  const r = await oneshot({ model, scheme, method, calibrate, numSamples: 2, maxSeqLength: 16, output: out, warn: () => undefined });
  return r.output;
}

for (const [family, model] of FAMILIES)
  test(`${family}: a two-group recipe (data-free) and a three-group one (GPTQ), on the command line and as recipe files, resolve as compressed-tensors resolves them; inspect clean`, async () => {
    const two = await run(model, [`${EXPERTS}=NVFP4A16`, `${ATTENTION}=FP8_DYNAMIC`], path.join(tmp, `${family}-two`), "rtn");
    const f2 = resolveOutput(two);
    assert.ok((f2.get("nvfp4-pack-quantized") ?? []).every((m) => /experts\.\d+\./.test(m)));
    assert.ok((f2.get("float-quantized") ?? []).every((m) => /self_attn\./.test(m)));
    assert.ok((f2.get("nvfp4-pack-quantized") ?? []).length > 0);
    const report = JSON.parse(fs.readFileSync(path.join(two, "moecal.json"), "utf8")) as {
      recipe: { entries: { scheme: string; linears: number }[] };
    };
    assert.deepEqual(
      report.recipe.entries.map((e) => [e.scheme, e.linears]),
      [
        ["NVFP4A16", f2.get("nvfp4-pack-quantized")?.length ?? 0],
        ["FP8_DYNAMIC", f2.get("float-quantized")?.length ?? 0],
      ],
    );
    // the same recipe as an llm-compressor recipe file writes the same checkpoint
    const yaml = path.join(tmp, `${family}.yaml`);
    fs.writeFileSync(
      yaml,
      `q_stage:\n  q_modifiers:\n    QuantizationModifier:\n      scheme: {NVFP4A16: ['${EXPERTS}'], FP8_DYNAMIC: ['${ATTENTION}']}\n`,
    );
    const fromFile = (await oneshot({ model, recipe: yaml, output: path.join(tmp, `${family}-file`), warn: () => undefined })).output;
    assert.deepEqual(filesDiffering(two, fromFile), []);
    const three = await run(model, ["W4A16", `${EXPERTS}=NVFP4A16`, `${O_PROJ}=W8A16`], path.join(tmp, `${family}-three`), "gptq");
    const yaml3 = path.join(tmp, `${family}-three.yaml`);
    fs.writeFileSync(
      yaml3,
      `q_stage:\n  q_modifiers:\n    GPTQModifier:\n      scheme: {W4A16: [Linear], NVFP4A16: ['${EXPERTS}'], W8A16: ['${O_PROJ}']}\n`,
    );
    const threeFile = await oneshot({
      model,
      recipe: yaml3,
      numSamples: 2,
      maxSeqLength: 16,
      output: path.join(tmp, `${family}-three-file`),
      warn: () => undefined,
    });
    assert.deepEqual(filesDiffering(three, threeFile.output), []);
    const f3 = resolveOutput(three);
    const packed = f3.get("pack-quantized") ?? [];
    assert.ok(
      packed.some((m) => /o_proj$/.test(m)) && packed.some((m) => /self_attn\.(?!o_proj)/.test(m)),
      "W8A16 o_proj, W4A16 the rest of attention",
    );
    assert.ok((f3.get("nvfp4-pack-quantized") ?? []).every((m) => /experts\.\d+\./.test(m)));
    for (const out of [two, three]) assert.deepEqual(inspectCheckpoint(out).problems, [], `${family}: ${out}`);
    const cfg = JSON.parse(fs.readFileSync(path.join(three, "config.json"), "utf8")).quantization_config;
    assert.equal(cfg.format, "mixed-precision");
    assert.deepEqual(Object.keys(cfg.config_groups), ["group_0", "group_1", "group_2"]);
  });

test("a mixed data-free recipe writes what the calibrated path writes, byte for byte; eval reads the checkpoint back", async () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  const recipe = [`${EXPERTS}=NVFP4A16`, `${O_PROJ}=FP8_BLOCK`, "W4A16"];
  const free = await run(model, recipe, path.join(tmp, "free"), "rtn");
  const calibrated = await run(model, recipe, path.join(tmp, "calibrated"), "rtn", true);
  for (const f of fs.readdirSync(calibrated).filter((f) => f !== "moecal.json" && f !== "coverage.svg"))
    assert.ok(fs.readFileSync(path.join(free, f)).equals(fs.readFileSync(path.join(calibrated, f))), `${f} differs`);
  const kl = evalKl(cliIn(tmp), free, model);
  assert.ok(kl > 0 && kl < 0.5, `KL ${kl}`);
});

test("overlapping targets: an exact name before a regex before the class, as compressed-tensors' match_targets orders them", () => {
  const recipe = parseRecipe(["W4A16", "re:.*self_attn\\..*=W8A16", "model.layers.1.self_attn.q_proj=FP8_DYNAMIC"]);
  const of = (n: string): string | undefined => schemeOfLinear(recipe, ["re:.*mlp\\.gate$"], n)?.name;
  assert.equal(of("model.layers.1.self_attn.q_proj"), "FP8_DYNAMIC");
  assert.equal(of("model.layers.1.self_attn.k_proj"), "W8A16");
  assert.equal(of("model.layers.1.mlp.experts.0.up_proj"), "W4A16");
  assert.equal(of("model.layers.1.mlp.gate"), undefined, "the ignore list first");
  assert.deepEqual(
    parseRecipe(["re:a=W4A16", "re:b=W4A16"]).entries.map((e) => e.targets),
    [["re:a", "re:b"]],
    "one group per scheme",
  );
  // --group-size sizes the entries whose groups may be resized; none: refused
  assert.deepEqual(
    parseRecipe(["W4A16", "re:a=FP8_BLOCK"], { groupSize: 32 }).entries.map((e) => e.scheme.weights.groupSize),
    [32, null],
  );
  assert.throws(() => parseRecipe(["re:a=NVFP4A16", "re:b=FP8_BLOCK"], { groupSize: 32 }), /NVFP4A16 has groups of 16 by definition/);
});

test("a default the other entries leave empty is said, and no config group is written for it", async () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  const warnings: string[] = [];
  const out = path.join(tmp, "empty-default");
  await oneshot({
    model,
    scheme: ["W4A16", `${EXPERTS}=NVFP4A16`, `${ATTENTION}=FP8_DYNAMIC`],
    method: "rtn",
    output: out,
    warn: (m) => warnings.push(m),
  });
  assert.ok(
    warnings.some((w) => /--scheme W4A16 \(every other Linear\) matches none/.test(w)),
    warnings.join("\n"),
  );
  const groups = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")).quantization_config.config_groups;
  assert.deepEqual(
    Object.values(groups).map((g) => (g as { targets: string[] }).targets),
    [[EXPERTS], [ATTENTION]],
  );
});

test("Qwen3.5: patterns match the checkpoint's names (model.language_model.*), as vLLM matches the written config", async () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_5_moe");
  const out = await run(model, ["re:model\\.language_model\\.layers\\.\\d+\\.self_attn\\..*=W8A16"], path.join(tmp, "q35-stored"), "rtn");
  assert.ok((resolveOutput(out).get("pack-quantized") ?? []).some((m) => /^model\.language_model\.layers\.\d+\.self_attn\./.test(m)));
  // inspect, the loader and eval resolve the written patterns against the checkpoint's names too
  assert.deepEqual(inspectCheckpoint(out).problems, []);
  const kl = evalKl(cliIn(tmp), out, model);
  assert.ok(kl > 0 && kl < 0.5, `KL ${kl}`);
  await assert.rejects(
    run(model, ["re:model\\.layers\\.\\d+\\.self_attn\\..*=W8A16"], path.join(tmp, "q35-presented"), "rtn"),
    (e: unknown) =>
      e instanceof UsageError &&
      /matches no Linear layer that is quantized \(names look like model\.language_model\.layers\./.test(e.message),
  );
});

test("refused before any work: a fused module split between groups, an entry that matches nothing, a malformed or unknown entry", async () => {
  const model = path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe");
  const refused = async (scheme: string[], message: RegExp): Promise<void> => {
    const out = path.join(tmp, "refused");
    await assert.rejects(run(model, scheme, out, "rtn"), (e: unknown) => e instanceof UsageError && message.test(e.message));
    assert.equal(fs.existsSync(out), false);
  };
  await refused(
    ["W4A16", "re:.*q_proj=W8A16"],
    /splits \d+ module\(s\) that vLLM fuses.*model\.layers\.\d+\.self_attn.*W8A16: q_proj; W4A16: k_proj, v_proj/,
  );
  await refused(["W4A16", "re:.*nothing_here=W8A16"], /--scheme re:\.\*nothing_here=W8A16 matches no Linear layer that is quantized/);
  await assert.rejects(
    oneshot({ model, scheme: ["W4A16", "re:.*down_proj=W4A16"], method: ["re:.*down_proj=rtn"], output: path.join(tmp, "refused") }),
    (e: unknown) =>
      e instanceof UsageError && /experts: .* W4A16 by gptq: experts\.0\.gate_proj.*; W4A16 by rtn: experts\.0\.down_proj/.test(e.message),
    "one scheme by two methods writes two config groups: vLLM's fused experts take one",
  );
  // vLLM finds Mixtral's fused experts under experts.0.gate_proj/up_proj/down_proj, not w1/w3/w2
  await assert.rejects(
    oneshot({
      model: path.join(ROOT, "test", "fixtures", "tiny-mixtral"),
      scheme: ["re:.*experts\\.\\d+\\.w[123]$=NVFP4A16"],
      method: "rtn",
      output: path.join(tmp, "refused"),
    }),
    (e: unknown) =>
      e instanceof UsageError &&
      /block_sparse_moe\.experts: vLLM looks its scheme up under experts\.0\.gate_proj\/up_proj\/down_proj, which the targets give gate_proj: unquantized/.test(
        e.message,
      ),
  );
  await refused(["=W8A16"], /the pattern before "=" is empty/);
  await refused(["re:.*=W5A16"], /unknown scheme "W5A16"/);
  await refused(["re:(=W4A16"], /not a valid regular expression/);
});

test("as a new user would: npx moecal oneshot --scheme 're:.*experts.*'=NVFP4A16 --scheme 're:.*self_attn.*'=FP8_BLOCK on the bundled model; inspect accepts it", () => {
  const cli = cliIn(tmp);
  cli(
    "oneshot",
    "--scheme",
    "re:.*experts.*=NVFP4A16",
    "--scheme",
    "re:.*self_attn.*=FP8_BLOCK",
    "--num-samples",
    "8",
    "--max-seq-length",
    "64",
    "--output",
    "flagship",
    "--quiet",
  );
  assert.match(cli("inspect", "flagship"), /no problems found/);
  const report = JSON.parse(fs.readFileSync(path.join(tmp, "flagship", "moecal.json"), "utf8")) as { scheme: string; method: string };
  assert.equal(report.scheme, "re:.*experts.*=NVFP4A16 re:.*self_attn.*=FP8_BLOCK");
  assert.equal(report.method, "gptq");
});

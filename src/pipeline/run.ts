/**
 * What every oneshot run does before and after its work, whichever executor quantizes (the
 * calibrated layer loop, or the data-free pass): every check before any work, and the output
 * assembled in one order (embeddings, each layer's tensors, final norm, lm_head, unused input
 * tensors), so both executors write the same bytes for the same quantized tensors.
 */
import path from "node:path";
import { NumericalError, UsageError, asFormatError } from "../errors.js";
import { confinedFile } from "../io/files.js";
import { checkpointHash } from "../io/hash.js";
import { firstNonFiniteIn } from "../io/safetensors.js";
import type { Checkpoint } from "../io/checkpoint.js";
import { type SourceQuantization, openCheckpoint, sourceQuantization } from "../io/source-format.js";
import { DEFAULT_SHARD_BYTES, type NamedRaw, PIECE_BYTES, ShardedWriter } from "../io/writer.js";
import { type ModelFiles, modelFiles } from "../io/model-files.js";
import { Linear } from "../nn/layers.js";
import { type TensorSource, checkpointSource } from "../io/tensor-source.js";
import { type WeightMapping, assertMappingComplete } from "../nn/weights.js";
import { type FusedGroup, fusedSchemeConflicts, oneWeightSets } from "../models/fused.js";
import type { CausalLM, ModelConfig, ModelFamily } from "../models/family.js";
import { servingProblems } from "../export/vllm-support.js";
import { readModelConfig } from "../models/registry.js";
import { OutputFolder } from "../export/output.js";
import type { ScaleDType } from "../quantization/params.js";
import { type Scheme, groupsConfig, matchesAny, validatePatterns } from "../quantization/scheme.js";
import { type Recipe, type RecipeEntry, entryOfLinear, recipeMethod } from "../quantization/recipe.js";
import { BUNDLED_DATASET, BUNDLED_MODEL } from "../paths.js";
import type { Method } from "./quantize-layer.js";
import { type OneshotReport, writeReportFiles } from "./report.js";
import { assertMoeLookup, assertNoFusedSplit, checkUnexpectedTensors, resolveRecipe, scaleDTypeOf } from "./preflight.js";
import { inStoredOnlyLayer, storedName, storedOnlyLinears } from "../models/stored-layers.js";
import { safePoint } from "../util/interrupt.js";
import type { OneshotOptions } from "./oneshot.js";

/** An opened run: the model, its mapping and targets, the fitted scheme, and the output being written. */
export interface Run {
  opts: OneshotOptions;
  modelDir: string;
  datasetFile: string;
  /** the recipe as given (one entry per scheme) */
  recipe: Recipe;
  /** the first entry's scheme, its group size fitted (the only one unless the recipe mixes schemes) */
  scheme: Scheme;
  /** each entry's scheme, its group size fitted to the entry's Linears */
  schemes: readonly Scheme[];
  /** a Linear's scheme, its group size fitted (null: left unquantized) */
  schemeOf: (linear: string) => Scheme | null;
  /** a quantized Linear's method (its recipe entry's) */
  methodOf: (linear: string) => Method;
  family: ModelFamily;
  config: ModelConfig;
  ck: Checkpoint;
  source: TensorSource;
  /** the module tree (weights loaded layer by layer, when at all) */
  model: CausalLM;
  mapping: WeightMapping;
  /** the ignore list as written to the output: the family's defaults and the user's */
  ignore: string[];
  /** Linears left unquantized */
  ignored: string[];
  isTarget: (linear: string) => boolean;
  targets: ReadonlySet<string>;
  /** Linears vLLM runs as one weight, which share NVFP4's global scale */
  sharedGlobalScale: readonly (readonly string[])[];
  scaleDType: ScaleDType;
  companions: ModelFiles;
  out: OutputFolder;
  warn: (message: string) => void;
}

/** `./<model folder>-<schemes>`: tiny-afmoe-W4A16, or for a recipe its schemes in order (tiny-afmoe-NVFP4A16-FP8_BLOCK). */
function defaultOutput(modelDir: string, recipe: Recipe): string {
  return path.resolve(`${path.basename(path.resolve(modelDir))}-${recipe.entries.map((e) => e.scheme.name).join("-")}`);
}

/** A run's model side: everything of a Run but its output folder (a distributed worker opens only this). */
export type RunModel = Omit<Run, "out">;

/** The model's config and family read, and the run's inputs named (nothing else opened yet). */
function readInputs(opts: OneshotOptions, dataFree: boolean) {
  const modelDir = opts.model ?? BUNDLED_MODEL;
  const datasetFile = opts.dataset ?? BUNDLED_DATASET;
  const warn = opts.warn ?? ((m: string) => process.emitWarning(m));
  validatePatterns(opts.ignore ?? []);
  // the data-free path reads any checkpoint; an unknown model_type only there, from names and shapes
  const { family, config } = readModelConfig(modelDir, dataFree ? { generic: warn } : {});
  return { modelDir, datasetFile, warn, family, config };
}

/** The rest of the model side, every check of it made before any work. */
function openInputs(opts: OneshotOptions, recipe: Recipe, inputs: ReturnType<typeof readInputs>): RunModel {
  const { modelDir, family, config, warn } = inputs;
  const ignore = [...family.defaultIgnore, ...(opts.ignore ?? []), ...recipe.ignore];
  // FP8 block-scaled sources (DeepSeek-V3, Kimi-K2) and compressed-tensors checkpoints are read decoded
  const stored = sourceQuantization(config.raw, `${modelDir}/config.json`);
  return { ...preflight(opts, { modelDir, stored }, family, config, ignore, recipe, warn), ...inputs, opts };
}

/** The model, its mapping and the fitted recipe, checked as a run checks them, without an output. */
export function openRunModel(opts: OneshotOptions, recipe: Recipe): RunModel {
  return openInputs(opts, recipe, readInputs(opts, false));
}

/**
 * Open a run: refuse bad options, models and ignore lists before any work, take the output's
 * lock and temporary folder. On any failure after that the output is aborted before rethrowing.
 */
export function openRun(opts: OneshotOptions, recipe: Recipe, dataFree: boolean): Run {
  const inputs = readInputs(opts, dataFree);
  const out = new OutputFolder(opts.output ?? defaultOutput(inputs.modelDir, recipe), {
    overwrite: opts.overwrite,
    inputs: [
      { what: "model", path: inputs.modelDir },
      { what: "dataset", path: inputs.datasetFile },
    ],
    warn: inputs.warn,
  });
  try {
    return { ...openInputs(opts, recipe, inputs), out };
  } catch (e) {
    out.abort();
    throw e;
  }
}

type Checked = Omit<Run, "opts" | "modelDir" | "datasetFile" | "out" | "warn">;

/**
 * An entry that matches no Linear is refused (a pattern's typo), except the default (a bare SCHEME:
 * "the rest"), which other entries may have left empty: it is then said and written nowhere.
 */
function assertEntriesUsed(
  recipe: Recipe,
  entryOf: ReadonlyMap<string, number>,
  allLinears: readonly string[],
  warn: (m: string) => void,
): void {
  const used = new Set(entryOf.values());
  const like = allLinears.find((n) => n.includes(".experts.")) ?? allLinears[0];
  recipe.entries.forEach((e, k) => {
    if (used.has(k)) return;
    if (used.size > 0 && e.targets.every((t) => t === "Linear"))
      warn(`--scheme ${e.scheme.name} (every other Linear) matches none: the other entries cover every quantized Linear`);
    else
      throw new UsageError(
        `--scheme ${e.targets.join(", ")}=${e.scheme.name} matches no Linear layer that is quantized (names look like ${like}; re: patterns match from the start; more specific targets and the ignore list take precedence)`,
      );
  });
}

/**
 * What vLLM needs to load the result, checked before any work: every module it fuses on one
 * written config group, and a fused MoE's scheme found under the names vLLM looks it up by.
 */
function assertVllmLoads(
  recipe: Recipe,
  entryOf: ReadonlyMap<string, number>,
  fused: readonly FusedGroup[],
  ignored: readonly string[],
  config: ModelConfig,
): void {
  // one written config group per fused module: entries of one scheme but another method write two
  // (GPTQ's actorder "static", round-to-nearest's null), and vLLM requires the groups of a fused
  // MoE's experts.0.gate_proj/up_proj/down_proj to be equal (vllm 8a95a68,
  // compressed_tensors_moe.py get_moe_method: "All MoE projections need to have same quantization scheme")
  const mixedMethods = recipeMethod(recipe) === "mixed";
  const label = (e: RecipeEntry | null): string =>
    e === null ? "unquantized" : mixedMethods ? `${e.scheme.name} by ${e.method}` : e.scheme.name;
  const entryName = (n: string): string => {
    const k = entryOf.get(n);
    return label(k === undefined ? null : (recipe.entries[k] as RecipeEntry));
  };
  assertNoFusedSplit(fusedSchemeConflicts(fused, entryName));
  // a name vLLM looks up, resolved as vLLM resolves it against the config written: the ignore
  // list as exact names, then the recipe's targets
  const written = new Set(ignored.map((n) => storedName(n, config)));
  const lookedUp = (n: string): string => {
    const stored = storedName(n, config);
    return label(written.has(stored) ? null : entryOfLinear(recipe, [], stored));
  };
  assertMoeLookup(fused, entryName, lookedUp, (n) => storedName(n, config));
}

function preflight(
  opts: OneshotOptions,
  { modelDir, stored }: { modelDir: string; stored: SourceQuantization },
  family: ModelFamily,
  config: ModelConfig,
  ignore: string[],
  recipe: Recipe,
  warn: (m: string) => void,
): Checked {
  const ck = openCheckpoint(modelDir, stored, {
    modelPrefix: config.storedModelPrefix,
    keep: (n) => inStoredOnlyLayer(n, config),
    decodeQuantized: true,
  });
  const model = family.build(config);
  const mapping = family.mapWeights(
    config,
    model.namedParameters().map(([n, p]) => [n, p.shape] as const),
    new Map(ck.names().map((n) => [n, ck.info(n).shape])),
  );
  assertMappingComplete(mapping, modelDir);
  // companion files (tokenizer, remote code) are checked before any work, copied at the end
  const companions = modelFiles(modelDir, config.raw);
  if (companions.missing.length)
    warn(`${modelDir}: auto_map names remote code that is not in the folder (${companions.missing.join(", ")}); the output lacks it too`);
  const allLinears = model
    .namedModules()
    .filter(([, m]) => m instanceof Linear)
    .map(([n]) => n);
  const {
    entryOf,
    schemes: fitted,
    schemeOf,
    methodOf,
  } = resolveRecipe(recipe, ignore, model, opts.groupSize !== undefined, warn, (n) => storedName(n, config));
  const isTarget = (n: string): boolean => entryOf.has(n);
  const ignored = [...allLinears.filter((n) => !isTarget(n)), ...storedOnlyLinears(mapping.unexpected, config, (n) => ck.info(n).shape)];
  assertEntriesUsed(
    recipe,
    entryOf,
    allLinears.map((n) => storedName(n, config)),
    warn,
  );
  for (const p of [...(opts.ignore ?? []), ...recipe.ignore])
    if (!allLinears.some((n) => matchesAny(n, [p])))
      warn(
        `${recipe.ignore.includes(p) ? "the recipe's ignore" : "--ignore"} ${p} matches no Linear layer of the model (names look like ${allLinears.find((n) => n.includes(".experts.")) ?? allLinears[0]}; re: patterns match from the start)`,
      );
  const fused = family.fusedGroups(allLinears);
  if (opts.vllmCheck ?? true) assertVllmLoads(recipe, entryOf, fused, ignored, config);
  const targets = new Set(allLinears.filter(isTarget));
  checkUnexpectedTensors(mapping.unexpected, config, targets, modelDir, warn);
  assertPassThroughFinite(ck, mapping, targets, modelDir);
  const scheme = fitted[0] as Scheme;
  const serving = servingProblems(model, fused, allLinears, schemeOf);
  if (serving.length) warn(`${serving[0]}${serving.length > 1 ? ` (and ${serving.length - 1} more module(s) like it)` : ""}`);
  const firstTarget = allLinears.find(isTarget);
  const scaleDType: ScaleDType = firstTarget ? scaleDTypeOf(ck, `${firstTarget}.weight`) : "BF16";
  const source = checkpointSource(ck);
  const sharedGlobalScale = oneWeightSets(fused);
  return {
    recipe,
    scheme,
    schemes: fitted,
    schemeOf,
    methodOf,
    family,
    config,
    ck,
    source,
    model,
    mapping,
    ignore,
    ignored,
    isTarget,
    targets,
    sharedGlobalScale,
    scaleDType,
    companions,
  };
}

/** Every tensor passed through unquantized is checked before anything is written (in pieces: any size). */
function assertPassThroughFinite(ck: Checkpoint, mapping: WeightMapping, targets: ReadonlySet<string>, modelDir: string): void {
  const targetWeights = new Set([...targets].map((n) => `${n}.weight`));
  const passThrough = new Set(
    [...mapping.sources]
      .filter(([p]) => !targetWeights.has(p))
      .map(([, src]) => src)
      .concat(mapping.unexpected),
  );
  for (const n of passThrough) {
    const bad = firstNonFiniteIn(ck.info(n).dtype, ck.rawChunks(n, PIECE_BYTES));
    if (bad >= 0)
      throw new NumericalError(
        `${modelDir}: tensor "${n}" (written unquantized) holds a non-finite value at flat index ${bad}; nothing was written`,
      );
  }
}

/**
 * Write the output's tensors in the one order both executors share: the embeddings, each layer's
 * tensors as `layer(i)` yields them (a tensor already written is skipped), the final norm, lm_head,
 * and the input's unused tensors. Tensors copied unchanged go through in pieces, `copied` told of
 * each (by source name). `writer` (a resumed one) defaults to a fresh one in the output's folder.
 */
export async function writeCheckpoint(
  run: Run,
  layer: (i: number) => Iterable<NamedRaw> | AsyncIterable<NamedRaw>,
  opts: { writer?: ShardedWriter; copied?: (source: string) => void } = {},
): Promise<void> {
  const { ck, mapping, out } = run;
  const writer = opts.writer ?? new ShardedWriter(out.tmp, run.opts.maxShardBytes ?? DEFAULT_SHARD_BYTES);
  const written = (n: string): boolean => writer.has(storedName(n, run.config));
  const copyRaw = (param: string): void => {
    const src = mapping.sources.get(param) ?? param;
    if (written(src)) return;
    const { dtype, shape } = ck.info(src);
    writer.addPieces({ name: storedName(src, run.config), dtype, shape }, ck.rawChunks(src, PIECE_BYTES));
    opts.copied?.(src);
  };
  copyRaw("model.embed_tokens.weight");
  for (let i = 0; i < run.config.numHiddenLayers; i++)
    for await (const t of layer(i)) if (!written(t.name)) writer.add({ ...t, name: storedName(t.name, run.config) });
  copyRaw("model.norm.weight");
  copyRaw("lm_head.weight");
  for (const n of mapping.unexpected) copyRaw(n);
  writer.finish(out.tmp);
}

/** The recipe for moecal.json: as given, and per entry how many Linears it quantized. */
export function recipeReport(run: Run): OneshotReport["recipe"] {
  const counts = run.schemes.map(() => 0);
  for (const n of run.targets) {
    const k = run.schemes.indexOf(run.schemeOf(n) as Scheme);
    counts[k] = (counts[k] ?? 0) + 1;
  }
  const r = run.recipe;
  return {
    given: r.given,
    ...(r.text === undefined ? {} : { file_text: r.text }),
    ignore: r.ignore,
    gptq: r.gptq,
    entries: r.entries.map((e, k) => ({ targets: e.targets, scheme: e.scheme.name, method: e.method, linears: counts[k] as number })),
  };
}

/** The model's content hash (config.json, the index and every weight file): it names the model in moecal.json. */
export function modelHash(run: RunModel): Promise<string> {
  return checkpointHash(run.modelDir, run.ck.weightFiles());
}

/** Write config.json, the companion files and the report, then commit the output (the last point a stop is honoured before). */
export async function finishRun(run: Run, report: OneshotReport): Promise<string> {
  const { out, config } = run;
  const ignored = run.ignored.map((n) => storedName(n, config));
  // exact names as stored (a Qwen3.5 checkpoint's model.language_model.*); patterns and the class as given
  const used = recipeReport(run).entries.map((e) => e.linears > 0);
  // one config group per distinct written scheme: entries that differ only in method share one
  const groups: { targets: string[]; scheme: Scheme; actorder: Scheme["weights"]["actorder"] }[] = [];
  run.recipe.entries.forEach((e, k) => {
    if (!used[k]) return;
    const scheme = run.schemes[k] as Scheme;
    const targets = e.targets.map((t) => (t.startsWith("re:") || t === "Linear" ? t : storedName(t, config)));
    const actorder = e.method === "gptq" ? scheme.weights.actorder : null;
    const same = groups.find((g) => g.actorder === actorder && JSON.stringify(g.scheme) === JSON.stringify(scheme));
    if (same) same.targets.push(...targets);
    else groups.push({ targets, scheme, actorder });
  });
  const qc = groupsConfig(groups, ignored);
  out.writeFile("config.json", `${JSON.stringify({ ...config.raw, quantization_config: qc }, null, 2)}\n`);
  for (const f of run.companions.files) out.copyFrom(confinedFile(run.modelDir, f, asFormatError), f);
  await writeReportFiles(out, report);
  // the last point to stop at: once the commit begins, it finishes (the CLI says so)
  await safePoint();
  return out.commit();
}

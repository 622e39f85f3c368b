/**
 * What every oneshot run does before and after its work, whichever executor quantizes (the
 * calibrated layer loop, or the data-free pass): every check before any work, and the output
 * assembled in one order (embeddings, each layer's tensors, final norm, lm_head, unused input
 * tensors), so both executors write the same bytes for the same quantized tensors.
 */
import path from "node:path";
import { NumericalError, asFormatError } from "../errors.js";
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
import { fusedSchemeConflicts, oneWeightSets } from "../models/fused.js";
import type { CausalLM, ModelConfig, ModelFamily } from "../models/family.js";
import { servingProblems } from "../export/vllm-support.js";
import { readModelConfig } from "../models/registry.js";
import { OutputFolder } from "../export/output.js";
import type { ScaleDType } from "../quantization/params.js";
import { type Scheme, matchesAny, quantizationConfig, validatePatterns } from "../quantization/scheme.js";
import { BUNDLED_DATASET, BUNDLED_MODEL } from "../paths.js";
import type { Method } from "./quantize-layer.js";
import { type OneshotReport, writeReportFiles } from "./report.js";
import { assertNoFusedSplit, checkUnexpectedTensors, fitGroupSize, scaleDTypeOf } from "./preflight.js";
import { inStoredOnlyLayer, storedName, storedOnlyLinears } from "../models/stored-layers.js";
import { safePoint } from "../util/interrupt.js";
import type { OneshotOptions } from "./oneshot.js";

/** An opened run: the model, its mapping and targets, the fitted scheme, and the output being written. */
export interface Run {
  opts: OneshotOptions;
  modelDir: string;
  datasetFile: string;
  method: Method;
  /** the scheme with its group size fitted to every target Linear */
  scheme: Scheme;
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

function defaultOutput(modelDir: string, scheme: string): string {
  return path.resolve(`${path.basename(path.resolve(modelDir))}-${scheme.toUpperCase()}`);
}

/**
 * Open a run: refuse bad options, models and ignore lists before any work, take the output's
 * lock and temporary folder. On any failure after that the output is aborted before rethrowing.
 */
export function openRun(opts: OneshotOptions, method: Method, preset: Scheme, dataFree: boolean): Run {
  const modelDir = opts.model ?? BUNDLED_MODEL;
  const datasetFile = opts.dataset ?? BUNDLED_DATASET;
  const warn = opts.warn ?? ((m: string) => process.emitWarning(m));
  validatePatterns(opts.ignore ?? []);
  // the data-free path reads any checkpoint; an unknown model_type only there, from names and shapes
  const { family, config } = readModelConfig(modelDir, dataFree ? { generic: warn } : {});
  const ignore = [...family.defaultIgnore, ...(opts.ignore ?? [])];
  // FP8 block-scaled sources (DeepSeek-V3, Kimi-K2) and compressed-tensors checkpoints are read decoded
  const stored = sourceQuantization(config.raw, `${modelDir}/config.json`);
  const out = new OutputFolder(opts.output ?? defaultOutput(modelDir, preset.name), {
    overwrite: opts.overwrite,
    inputs: [
      { what: "model", path: modelDir },
      { what: "dataset", path: datasetFile },
    ],
    warn,
  });
  try {
    return {
      ...preflight(opts, { modelDir, stored }, family, config, ignore, preset, warn),
      opts,
      modelDir,
      datasetFile,
      method,
      out,
      warn,
    };
  } catch (e) {
    out.abort();
    throw e;
  }
}

type Checked = Omit<Run, "opts" | "modelDir" | "datasetFile" | "method" | "out" | "warn">;

function preflight(
  opts: OneshotOptions,
  { modelDir, stored }: { modelDir: string; stored: SourceQuantization },
  family: ModelFamily,
  config: ModelConfig,
  ignore: string[],
  preset: Scheme,
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
  const ignored = [
    ...allLinears.filter((n) => matchesAny(n, ignore)),
    ...storedOnlyLinears(mapping.unexpected, config, (n) => ck.info(n).shape),
  ];
  const isTarget = (n: string): boolean => !matchesAny(n, ignore);
  for (const p of opts.ignore ?? [])
    if (!allLinears.some((n) => matchesAny(n, [p])))
      warn(
        `--ignore ${p} matches no Linear layer of the model (names look like ${allLinears.find((n) => n.includes(".experts.")) ?? allLinears[0]}; re: patterns match from the start)`,
      );
  const fused = family.fusedGroups(allLinears);
  if (opts.vllmCheck ?? true) assertNoFusedSplit(fusedSchemeConflicts(fused, (n) => (isTarget(n) ? preset.name : "unquantized")));
  const targets = new Set(allLinears.filter(isTarget));
  checkUnexpectedTensors(mapping.unexpected, config, targets, modelDir, warn);
  assertPassThroughFinite(ck, mapping, targets, modelDir);
  const scheme = fitGroupSize(preset, model, isTarget, opts.groupSize !== undefined, warn);
  const serving = servingProblems(model, fused, allLinears, (n) => (targets.has(n) ? scheme : null));
  if (serving.length) warn(`${serving[0]}${serving.length > 1 ? ` (and ${serving.length - 1} more module(s) like it)` : ""}`);
  const firstTarget = allLinears.find(isTarget);
  const scaleDType: ScaleDType = firstTarget ? scaleDTypeOf(ck, `${firstTarget}.weight`) : "BF16";
  const source = checkpointSource(ck);
  const sharedGlobalScale = oneWeightSets(fused);
  return {
    scheme,
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

/** The model's content hash (config.json, the index and every weight file): it names the model in moecal.json. */
export function modelHash(run: Run): string {
  return checkpointHash(run.modelDir, run.ck.weightFiles(), asFormatError);
}

/** Write config.json, the companion files and the report, then commit the output (the last point a stop is honoured before). */
export async function finishRun(run: Run, report: OneshotReport): Promise<string> {
  const { out, scheme, config } = run;
  const ignored = run.ignored.map((n) => storedName(n, config));
  const qc = quantizationConfig(scheme, ignored, run.method === "gptq" ? scheme.weights.actorder : null);
  out.writeFile("config.json", `${JSON.stringify({ ...config.raw, quantization_config: qc }, null, 2)}\n`);
  for (const f of run.companions.files) out.copyFrom(confinedFile(run.modelDir, f, asFormatError), f);
  await writeReportFiles(out, report);
  // the last point to stop at: once the commit begins, it finishes (the CLI says so)
  await safePoint();
  return out.commit();
}

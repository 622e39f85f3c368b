import fs from "node:fs";
import { RANDOM_MODEL_OPTIONS, checkOptions } from "./options.js";
import path from "node:path";
import { f32ToBf16 } from "../engine/dtype.js";
import { ConfigError, UsageError, asFormatError } from "../errors.js";
import { ShardedWriter } from "../io/writer.js";
import { familyByType, familyFor } from "../models/registry.js";
import { OUTPUT_MARKER, OutputFolder } from "../export/output.js";
import { confinedFile, entryExists } from "../io/files.js";
import { BUNDLED_MODEL, MOECAL_VERSION } from "../paths.js";
import { fillNormal, rng } from "../util/random.js";
import { modelFiles } from "../io/model-files.js";
import { encodeFp8Blocks } from "../io/fp8-blocks.js";
import { matchesAny } from "../quantization/scheme.js";
import { storedName } from "../models/stored-layers.js";
import { readConfigJson, readJsonObject } from "../io/json.js";
import { MAX_TOKENIZER_BYTES } from "../io/tokenizer.js";

export interface RandomModelOptions {
  output: string;
  /** config to start from (default: the bundled model's) */
  like?: string;
  /** start from this family's tiny preset instead (a config.json `model_type`) */
  family?: string;
  /** config.json overrides, values parsed as JSON where they parse (`hidden_size=1024`) */
  set?: string[];
  layers?: number;
  seed?: number;
  overwrite?: boolean;
  maxShardBytes?: number;
  /**
   * store the decoder layers' Linear weights (routers excepted) as FP8 E4M3 blocks of this size
   * with float32 `weight_scale_inv`, as DeepSeek-V3 and Kimi-K2 are published
   */
  fp8Block?: number;
}

function parseSet(entries: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const e of entries) {
    const i = e.indexOf("=");
    if (i <= 0) throw new UsageError(`--set expects key=value, got "${e}"`);
    const v = e.slice(i + 1);
    try {
      out[e.slice(0, i)] = JSON.parse(v);
    } catch {
      out[e.slice(0, i)] = v;
    }
  }
  return out;
}

/** Per-layer lists of a config resized to num_hidden_layers (after --layers or --set changed it). */
function fitLayerLists(c: Record<string, unknown>): void {
  const n = c.num_hidden_layers;
  if (typeof n !== "number") return;
  if (Array.isArray(c.layer_types) && c.layer_types.length !== n) {
    // Qwen3-Next / 3.5 derive theirs from full_attention_interval; AFMoE's alternate sliding and full attention
    if (c.layer_types.includes("linear_attention")) delete c.layer_types;
    else {
      const every = typeof c.global_attn_every_n_layers === "number" ? c.global_attn_every_n_layers : 4;
      c.layer_types = Array.from({ length: n }, (_, i) => ((i + 1) % every ? "sliding_attention" : "full_attention"));
    }
  }
  // MiniMax-M2's per-layer attention kinds (all 1, full attention)
  if (Array.isArray(c.attn_type_list) && c.attn_type_list.length !== n)
    c.attn_type_list = Array.from({ length: n }, (_, i) => (c.attn_type_list as unknown[])[i] ?? 1);
}

/**
 * Write a random-weight checkpoint of any supported family (BF16; router biases F32) shaped like `like` with
 * overrides, plus its tokenizer. Tensors are generated one at a time and written in shards,
 * so memory stays bounded by one shard whatever the model size.
 */
export function randomModel(options: RandomModelOptions): { output: string; parameters: number } {
  const opts = checkOptions("randomModel", RANDOM_MODEL_OPTIONS, options);
  if (opts.like !== undefined && opts.family !== undefined) throw new UsageError("random-model takes --like or --family, not both");
  // a family's preset shape takes the bundled byte-level tokenizer
  const like = opts.like ?? BUNDLED_MODEL;
  const raw = opts.family !== undefined ? { ...familyByType(opts.family).randomPreset } : readConfigJson(like).json;
  delete raw.quantization_config;
  Object.assign(raw, parseSet(opts.set ?? []));
  // a vision-language config (Qwen3.5) keeps its text model's fields under text_config
  const text = (typeof raw.text_config === "object" && raw.text_config !== null ? raw.text_config : raw) as Record<string, unknown>;
  if (opts.layers !== undefined) text.num_hidden_layers = opts.layers;
  fitLayerLists(text);
  const family = familyFor(raw, "random-model config");
  const config = family.parseConfig(raw, "random-model config");
  if (typeof raw.vocab_size === "number" && entryExists(path.join(like, "tokenizer.json"))) {
    const tj = readJsonObject(confinedFile(like, "tokenizer.json", asFormatError), MAX_TOKENIZER_BYTES) as {
      model?: { vocab?: Record<string, number> };
      added_tokens?: { id: number }[];
    };
    const ids = [...Object.values(tj.model?.vocab ?? {}), ...(tj.added_tokens ?? []).map((t) => t.id)];
    const size = ids.reduce((a, b) => Math.max(a, b + 1), 0);
    if (size > config.vocabSize) throw new ConfigError(`vocab_size ${config.vocabSize} is smaller than the tokenizer's ${size} tokens`);
  }
  const out = new OutputFolder(opts.output, { overwrite: opts.overwrite, inputs: [{ what: "--like model", path: like }] });
  try {
    const writer = new ShardedWriter(out.tmp, opts.maxShardBytes ?? 512 * 1024 ** 2);
    const next = rng(opts.seed ?? 0);
    let parameters = 0;
    for (const [name, p] of family.build(config).namedParameters()) {
      const numel = p.shape.reduce((a, b) => a * b, 1);
      parameters += numel;
      // router biases are float32 in published checkpoints (AFMoE expert_bias, GLM e_score_correction_bias)
      if (name.endsWith("expert_bias") || name.endsWith("e_score_correction_bias")) {
        const bias = fillNormal(new Float32Array(numel), next, 1e-3);
        writer.add({ name: storedName(name, config), dtype: "F32", shape: p.shape, bytes: new Uint8Array(bias.buffer) });
        continue;
      }
      const isNorm = name.endsWith("norm.weight") || name.endsWith("layernorm.weight");
      const v = isNorm ? new Float32Array(numel).fill(1) : fillNormal(new Float32Array(numel), next, 0.02);
      const module = name.slice(0, -".weight".length);
      if (opts.fp8Block && name.startsWith("model.layers.") && p.shape.length === 2 && !matchesAny(module, family.defaultIgnore)) {
        const [rows, cols] = p.shape as [number, number];
        const { codes, scaleInv } = encodeFp8Blocks(v, rows, cols, opts.fp8Block);
        writer.add({ name, dtype: "F8_E4M3", shape: p.shape, bytes: codes });
        const scaleShape = [Math.ceil(rows / opts.fp8Block), Math.ceil(cols / opts.fp8Block)];
        writer.add({ name: `${module}.weight_scale_inv`, dtype: "F32", shape: scaleShape, bytes: new Uint8Array(scaleInv.buffer) });
        continue;
      }
      writer.add({ name: storedName(name, config), dtype: "BF16", shape: p.shape, bytes: new Uint8Array(f32ToBf16(v).buffer) });
    }
    writer.finish();
    const fp8 = opts.fp8Block
      ? { quant_method: "fp8", fmt: "e4m3", activation_scheme: "dynamic", weight_block_size: [opts.fp8Block, opts.fp8Block] }
      : undefined;
    out.writeFile("config.json", `${JSON.stringify({ ...raw, torch_dtype: "bfloat16", quantization_config: fp8 }, null, 2)}\n`);
    // the like-folder's tokenizer, generation config and remote code; the bundled tokenizer where it has none
    const { files } = modelFiles(like, raw);
    for (const f of files) out.copyFrom(confinedFile(like, f, asFormatError), f);
    for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      if (!files.includes(f) && fs.existsSync(path.join(BUNDLED_MODEL, f))) out.copyFrom(path.join(BUNDLED_MODEL, f), f);
    }
    out.writeFile(
      OUTPUT_MARKER,
      `${JSON.stringify(
        {
          moecal_version: MOECAL_VERSION,
          command: "random-model",
          like: path.basename(path.resolve(like)),
          seed: opts.seed ?? 0,
          parameters,
        },
        null,
        2,
      )}\n`,
    );
    return { output: out.commit(), parameters };
  } catch (e) {
    out.abort();
    throw e;
  }
}

/**
 * The plan of a data-free run (round-to-nearest, no calibration data): no dataset is read, nothing
 * is measured. Memory is the process, one job's weights per worker thread and one ahead (a Linear,
 * or an NVFP4 fused set: stored bytes, float32 copy, codes), the worker threads and the copy
 * buffers: flat in the model's size. Time is the source bytes at rates fitted on this project's
 * 2-vCPU machine (bench:data-free, docs/performance.md).
 */
import os from "node:os";
import path from "node:path";
import type { Checkpoint } from "../io/checkpoint.js";
import { DEFAULT_SHARD_BYTES, PIECE_BYTES } from "../io/writer.js";
import type { CausalLM, ModelConfig, ModelFamily } from "../models/family.js";
import { oneWeightSets } from "../models/fused.js";
import { Linear } from "../nn/layers.js";
import { type Scheme, isNvfp4 } from "../quantization/scheme.js";
import { type Recipe, recipeMethod, recipeName } from "../quantization/recipe.js";
import type { LayerPlan, Plan } from "./plan-types.js";
import { copiedBytes, layerBytes } from "./plan-bytes.js";
import { scaleDTypeOf } from "./preflight.js";
import type { OneshotOptions } from "./oneshot.js";

/** Seconds per source byte (bench:data-free): the main thread's reading, writing and hashing, and a worker's decoding and quantizing by kind of code. */
export const DATA_FREE_MODEL = {
  mainSecondsPerByte: 3.7e-9,
  quantSecondsPerByte: { int: 3.8e-9, fp8: 7.0e-9, fp4: 8.6e-9 },
  /** the scratch pool's buffers, the copy piece and the shard assembly's copy buffer */
  buffers: 3 * PIECE_BYTES,
} as const;

export interface OpenedForPlan {
  modelDir: string;
  family: ModelFamily;
  config: ModelConfig;
  ck: Checkpoint;
  model: CausalLM;
  recipe: Recipe;
  schemeOf: (linear: string) => Scheme | null;
}

/** Bytes one job of a layer holds at most: its Linears' stored bytes (2 per weight), float32 copies and codes (7 per weight). */
function jobBytes(
  linears: readonly [string, Linear][],
  schemeOf: (n: string) => Scheme | null,
  sets: readonly (readonly string[])[],
): number {
  const byName = new Map(linears);
  let held = 0;
  for (const [name, m] of linears) {
    const scheme = schemeOf(name);
    if (!scheme) continue;
    const set = isNvfp4(scheme.weights) ? (sets.find((s) => s.includes(name)) ?? [name]) : [name];
    const weights = set.filter((n) => schemeOf(n) === scheme && byName.has(n)).length * m.inFeatures * m.outFeatures;
    held = Math.max(held, 7 * weights);
  }
  return held;
}

/** The data-free plan; `process`: the process's own bytes and a worker thread's. */
export function dataFreePlan(opts: OneshotOptions, o: OpenedForPlan, process: { baseline: number; workerBytes: number }): Plan {
  const { ck, model, schemeOf, config } = o;
  const workers = opts.workers ?? os.availableParallelism();
  const parallel = Math.max(1, Math.min(workers, os.availableParallelism()));
  // a quantized Linear's seconds per source byte by its kind of code; a copied tensor's, the main thread's alone
  const perByte = (scheme: Scheme | null): number => {
    if (!scheme) return DATA_FREE_MODEL.mainSecondsPerByte;
    const kind = scheme.weights.type === "int" ? "int" : scheme.weights.numBits === 4 ? "fp4" : "fp8";
    return DATA_FREE_MODEL.mainSecondsPerByte + DATA_FREE_MODEL.quantSecondsPerByte[kind] / parallel;
  };
  const allLinears = model.namedModules().filter(([, m]) => m instanceof Linear) as [string, Linear][];
  const sets = oneWeightSets(o.family.fusedGroups(allLinears.map(([n]) => n)));
  const firstTarget = allLinears.find(([n]) => schemeOf(n) !== null)?.[0];
  const scaleDtype = firstTarget ? scaleDTypeOf(ck, `${firstTarget}.weight`) : "BF16";
  const layers: LayerPlan[] = [];
  let output = 0;
  let source = 0;
  for (let i = 0; i < config.numHiddenLayers; i++) {
    const prefix = `model.layers.${i}`;
    const layer = model.getSubmodule(prefix);
    const { read, write } = layerBytes(layer, prefix, ck, schemeOf, scaleDtype);
    const linears = layer.namedModules(prefix).filter(([, m]) => m instanceof Linear) as [string, Linear][];
    const held = (workers + 1) * jobBytes(linears, schemeOf, sets);
    let seconds = 0;
    for (const [n] of layer.namedParameters(prefix)) {
      const info = ck.has(n) ? ck.info(n) : null;
      const linear = n.endsWith(".weight") ? schemeOf(n.slice(0, -".weight".length)) : null;
      seconds += info ? (info.end - info.begin) * perByte(linear) : 0;
    }
    const memory = {
      parameters: held,
      hidden_states: 0,
      activations: 0,
      hessians: 0,
      gptq: 0,
      workers: workers * process.workerBytes,
      outputs: 0,
      retained: DATA_FREE_MODEL.buffers,
    };
    const moe = linears.some(([n]) => n.includes(".experts."));
    const peak = process.baseline + Object.values(memory).reduce((a, b) => a + b, 0);
    layers.push({
      layer: i,
      moe,
      non_expert: { input_bytes: 0, gptq_flops: 0, gptq_max_flops: 0, hessian_bytes: 0 },
      read_bytes: read,
      write_bytes: write,
      memory,
      peak_memory_bytes: peak,
      expert_groups: null,
      experts: null,
      flops: { calibrate: 0, propagate: 0, gptq: 0 },
      seconds,
    });
    output += write;
    source += read;
  }
  const copied = copiedBytes(model, ck).reduce((a, b) => a + b, 0);
  output += copied;
  source += copied;
  const assembly = Math.min(output, opts.maxShardBytes ?? DEFAULT_SHARD_BYTES);
  return {
    model: path.basename(path.resolve(o.modelDir)),
    scheme: recipeName(o.recipe),
    method: recipeMethod(o.recipe),
    samples: 0,
    tokens: 0,
    shards: 0,
    layers,
    peak_memory_bytes: Math.max(process.baseline + DATA_FREE_MODEL.buffers, ...layers.map((l) => l.peak_memory_bytes)),
    phases: { embed: 0, assemble: DATA_FREE_MODEL.buffers },
    baseline_bytes: process.baseline,
    // finished shards are kept in the work folder and moved into the output: no resume state besides
    disk_bytes: output + assembly,
    disk: { output, resume_state: 0, shard_assembly: assembly },
    seconds: layers.reduce((a, l) => a + l.seconds, 0) + copied * DATA_FREE_MODEL.mainSecondsPerByte,
    gemm_gflops: 0,
    data_free: { workers, job_bytes: Math.max(0, ...layers.map((l) => l.memory.parameters)) / (workers + 1), source_bytes: source },
  };
}

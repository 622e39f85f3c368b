/**
 * The data-free executor: round-to-nearest needs no activation statistics, so each weight is
 * quantized from itself, tensor by tensor, straight into the output's shards: no dataset, no
 * forward pass, no work folder, memory of a few tensors (an NVFP4 fused set at most) whatever the
 * model's size. It writes what the calibrated path writes with `--method rtn`, byte for byte.
 */
import { UsageError } from "../errors.js";
import { PIECE_BYTES } from "../io/writer.js";
import { availableMemory, peakRssBytes } from "../util/memory.js";
import { plan } from "./plan.js";
import { freeDiskBytes } from "./plan-report.js";
import path from "node:path";
import type { NamedRaw } from "../io/writer.js";
import { Linear } from "../nn/layers.js";
import { assertFinite } from "../nn/weights.js";
import { quantizedLinearTensors } from "../export/compressed-tensors.js";
import { rtnQuantize } from "../quantization/gptq.js";
import { absMax, nvfp4GlobalScale } from "../quantization/params.js";
import { type Scheme, hasStaticActivationScales, isNvfp4 } from "../quantization/scheme.js";
import { MOECAL_VERSION } from "../paths.js";
import { safePoint } from "../util/interrupt.js";
import { type Method, assertValidQParams } from "./quantize-layer.js";
import type { LayerReport, OneshotReport } from "./report.js";
import { assertComplete } from "./preflight.js";
import { type Run, finishRun, modelHash, writeCheckpoint } from "./run.js";
import type { OneshotResult } from "./oneshot.js";

/** Whether a run needs calibration data: GPTQ (Hessians), or a scheme with static activation scales (FP8's input scale, NVFP4's input global scale). */
export function needsData(method: Method, scheme: Scheme): boolean {
  return method === "gptq" || hasStaticActivationScales(scheme);
}

/** The data-free run: every layer's tensors quantized or copied in order, then the report and the commit. */
export async function dataFreeRun(run: Run, t0: number): Promise<OneshotResult> {
  const { opts, config } = run;
  const N = config.numHiddenLayers;
  if (opts.dataset !== undefined)
    run.warn(
      `the dataset ${opts.dataset} is not read: --method rtn with ${run.scheme.name} needs no calibration data (data-free); pass --calibrate to calibrate on it anyway`,
    );
  const layers: LayerReport[] = [];
  try {
    await assertFits(run);
    opts.onProgress?.({ kind: "start", layers: N, samples: 0, tokens: 0 });
    await writeCheckpoint(run, (i) => layerTensors(run, i, layers));
    const report: OneshotReport = {
      moecal_version: MOECAL_VERSION,
      model: { name: path.basename(path.resolve(run.modelDir)), sha256: modelHash(run) },
      data_free: true,
      scheme: run.scheme.name,
      method: run.method,
      group_size: run.scheme.weights.groupSize,
      actorder: null,
      dataset: null,
      num_samples: 0,
      tokens: 0,
      max_seq_length: null,
      calibrate_all_experts: null,
      expert_statistics: null,
      seed: null,
      ignore: run.ignore,
      coverage: { layers: {} },
      fallbacks: [],
      layers,
    };
    const output = await finishRun(run, report);
    return { output, report, wallSeconds: (performance.now() - t0) / 1000, peakRssMb: peakRssBytes() / 1024 ** 2 };
  } catch (e) {
    run.out.abort();
    throw e;
  }
}

/**
 * Refuse a data-free run that cannot fit, before any work: disk for the output (exact, from the
 * plan's byte count) and the shard being assembled; memory for the largest set of weights held at
 * once (an NVFP4 fused set, or one weight: float32, its codes and packed tensors) and the copy
 * buffers, beside the process itself.
 */
async function assertFits(run: Run): Promise<void> {
  const { opts, model, family, config, ck, scheme } = run;
  const p = await plan(
    { ...opts, model: run.modelDir, method: run.method },
    { samples: [], gemmGflops: 1, opened: { family, config, ck, model, scheme } },
  );
  const disk = p.disk.output + p.disk.shard_assembly;
  const free = freeDiskBytes(run.out.target);
  const mib = (b: number): string => `${(b / 1024 ** 2).toFixed(1)} MiB`;
  if (disk > free)
    throw new UsageError(
      `the data-free run needs ${mib(disk)} of disk (output ${mib(p.disk.output)}, shard assembly ${mib(p.disk.shard_assembly)}), but the file system of ${run.out.target} has ${mib(free)} free; free some space or choose another --output`,
    );
  let held = 0;
  for (const [name, m] of model.namedModules()) {
    if (!(m instanceof Linear) || !run.targets.has(name)) continue;
    const set = isNvfp4(scheme.weights) ? (run.sharedGlobalScale.find((s) => s.includes(name)) ?? [name]) : [name];
    const floats = set.filter((n) => run.targets.has(n)).length * m.inFeatures * m.outFeatures;
    held = Math.max(held, 4 * floats + 2 * m.inFeatures * m.outFeatures);
  }
  const memory = p.baseline_bytes + held + Math.min(2 * PIECE_BYTES, p.disk.output);
  const limit = opts.maxMemory ?? availableMemory();
  if (memory > limit)
    throw new UsageError(
      `the data-free run needs ${mib(memory)} of memory (the largest weights held at once ${mib(held)}, beside the process itself: Node.js and onnxruntime, about ${mib(p.baseline_bytes)}), more than --max-memory ${mib(limit)}`,
    );
}

/**
 * Layer `i`'s output tensors in the calibrated path's order (its parameters in module order, a
 * quantized Linear's tensors in place of its weight), each read when it is reached; a stop asked
 * for is honoured between tensors.
 */
async function* layerTensors(run: Run, i: number, reports: LayerReport[]): AsyncGenerator<NamedRaw> {
  const { opts, model, mapping, ck, scheme, scaleDType, isTarget } = run;
  opts.onProgress?.({ kind: "layer", layer: i, layers: run.config.numHiddenLayers });
  const prefix = `model.layers.${i}`;
  const layer = model.model.layers.at(i);
  const linears = new Map<string, Linear>();
  for (const [n, m] of layer.namedModules(prefix)) if (m instanceof Linear && isTarget(n)) linears.set(n, m);
  const weights = new LayerWeights(run, linears);
  const copied = new Set<string>();
  let quantized = 0;
  for (const [n] of layer.namedParameters(prefix)) {
    await safePoint();
    const name = n.endsWith(".weight") ? n.slice(0, -".weight".length) : "";
    const lin = linears.get(name);
    if (lin) {
      const global = weights.rowGlobal(name); // before take: the fused set's scale reads its members
      const q = rtnQuantize(weights.take(name), lin.outFeatures, lin.inFeatures, scheme.weights, scaleDType, name, global);
      assertValidQParams(q, `layer ${i}: ${name}`);
      const tensors = quantizedLinearTensors(name, q, scheme.format, scaleDType, null);
      assertComplete(
        name,
        tensors.map((t) => t.name),
        scheme,
      );
      quantized++;
      yield* tensors;
    } else {
      const src = mapping.sources.get(n) ?? n;
      if (copied.has(src)) continue;
      copied.add(src);
      yield { name: src, ...ck.readRaw(src) };
    }
  }
  const summary: LayerReport = {
    layer: i,
    min_routed: null,
    median_routed: null,
    experts_without_rows: 0,
    quantized_linears: quantized,
    fallbacks: 0,
    gptq_loss: 0,
  };
  reports.push(summary);
  opts.onProgress?.({ kind: "layer-done", layer: i, summary });
}

/**
 * A layer's target weights, read (float32, checked finite) when first needed and dropped once
 * quantized; for NVFP4, the global scale a Linear shares with the members of its fused set
 * (q/k/v, gate/up, an expert's gate/up) present in the layer: the smallest of theirs, as the
 * calibrated path computes it.
 */
class LayerWeights {
  private readonly cache = new Map<string, Float32Array>();
  private readonly globals = new Map<string, number>();

  constructor(
    private readonly run: Run,
    private readonly linears: ReadonlyMap<string, Linear>,
  ) {}

  private read(name: string): Float32Array {
    const cached = this.cache.get(name);
    if (cached) return cached;
    const src = this.run.mapping.sources.get(`${name}.weight`) ?? `${name}.weight`;
    const t = this.run.source.readF32(src);
    assertFinite(t, `${this.run.source.dir}: tensor "${src}"`);
    this.cache.set(name, t.data);
    return t.data;
  }

  /** The weight of `name`, no longer held here. */
  take(name: string): Float32Array {
    const w = this.read(name);
    this.cache.delete(name);
    return w;
  }

  /** Each row's NVFP4 global scale for `name` (undefined for other schemes). */
  rowGlobal(name: string): Float32Array | undefined {
    if (!isNvfp4(this.run.scheme.weights)) return undefined;
    let g = this.globals.get(name);
    if (g === undefined) {
      const set = this.run.sharedGlobalScale.find((s) => s.includes(name)) ?? [name];
      const present = set.filter((m) => this.linears.has(m));
      g = Math.min(...present.map((m) => nvfp4GlobalScale(absMax(this.read(m)), this.run.scaleDType)));
      for (const m of present) this.globals.set(m, g);
    }
    return new Float32Array((this.linears.get(name) as Linear).outFeatures).fill(g);
  }
}

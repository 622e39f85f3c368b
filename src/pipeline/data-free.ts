/**
 * The data-free executor: round-to-nearest needs no activation statistics, so each weight is
 * quantized from itself, tensor by tensor, straight into the output's shards: no dataset, no
 * forward pass, memory of a few tensors per worker whatever the model's size. The main thread
 * reads and writes; worker threads (`workers`, one per core by default) decode and quantize
 * (data-free-job.ts). Finished shards are kept in the work folder, so a rerun after a crash goes
 * on after the last one (shard-log.ts). It writes what the calibrated path writes with
 * `--method rtn`, byte for byte.
 */
import os from "node:os";
import path from "node:path";
import { UsageError } from "../errors.js";
import { DEFAULT_SHARD_BYTES, type NamedRaw, ShardedWriter } from "../io/writer.js";
import { availableMemory, peakRssBytes } from "../util/memory.js";
import { WorkerPool, ownedBuffers } from "../util/worker-pool.js";
import { plan } from "./plan.js";
import type { LayerPlan, Plan } from "./plan-types.js";
import { freeDiskBytes } from "./plan-report.js";
import { Linear } from "../nn/layers.js";
import { type Scheme, isNvfp4 } from "../quantization/scheme.js";
import { recipeMethod, recipeName } from "../quantization/recipe.js";
import { MOECAL_VERSION } from "../paths.js";
import { safePoint } from "../util/interrupt.js";
import { storedName } from "../models/stored-layers.js";
import type { LayerReport, OneshotReport } from "./report.js";
import { requiredSuffixes } from "../io/compressed-tensors.js";
import { type Run, finishRun, modelHash, recipeReport, writeCheckpoint } from "./run.js";
import { type DataFreeJob, owned, runDataFreeJob } from "./data-free-job.js";
import { ShardLog } from "./shard-log.js";
import { workFolderBytes } from "./work-folder.js";
import type { OneshotResult } from "./oneshot.js";

type DataFreePool = WorkerPool<DataFreeJob, NamedRaw[]>;

const DATA_FREE_KIND = {
  what: "data-free",
  script: new URL("./data-free-worker.js", import.meta.url),
  run: runDataFreeJob,
  transfer: (job: DataFreeJob): ArrayBuffer[] =>
    ownedBuffers(
      job.members.flatMap((m) =>
        "raw" in m.stored ? [m.stored.raw.bytes] : [m.stored.fp8.codes, new Uint8Array(m.stored.fp8.scaleInv.buffer)],
      ),
    ),
};

/** Worker threads of a data-free run: `workers`, else one per core. */
export function dataFreeWorkers(workers: number | undefined): number {
  return workers ?? os.availableParallelism();
}

/** What the layers share: the pool, the writer (resumed or fresh), the progress count. */
interface Pass {
  run: Run;
  pool: DataFreePool;
  writer: ShardedWriter;
  /** quantized Linears whose jobs may run ahead of the one being written */
  ahead: number;
  progress: (source: string) => void;
  reports: LayerReport[];
}

/** The data-free run: every layer's tensors quantized or copied in order, then the report and the commit. */
export async function dataFreeRun(run: Run, t0: number): Promise<OneshotResult> {
  const { opts, config } = run;
  const N = config.numHiddenLayers;
  if (opts.dataset !== undefined)
    run.warn(
      `the dataset ${opts.dataset} is not read: --method rtn with ${recipeName(run.recipe)} needs no calibration data (data-free); pass --calibrate to calibrate on it anyway`,
    );
  const workers = dataFreeWorkers(opts.workers);
  const pool: DataFreePool = new WorkerPool(workers, DATA_FREE_KIND);
  let log: ShardLog | undefined;
  try {
    const thePlan = await assertFits(run);
    opts.onProgress?.({ kind: "plan", plan: thePlan });
    const modelSha = await modelHash(run);
    log = openLog(run, modelSha);
    const shards = [...log.done];
    const journal = log;
    const writer = new ShardedWriter(journal.dir, opts.maxShardBytes ?? DEFAULT_SHARD_BYTES, {
      done: shards,
      onShard: (s, k) => {
        opts.onCheckpoint?.("shard-file", k);
        shards.push(s);
        journal.record(shards);
        opts.onCheckpoint?.("shard", k);
      },
    });
    opts.onProgress?.({ kind: "start", layers: N, samples: 0, tokens: 0 });
    if (shards.length) opts.onProgress?.({ kind: "resume-shards", shards: shards.length, folder: log.dir });
    const pass: Pass = { run, pool, writer, ahead: workers, progress: progressCounter(run, writer), reports: [] };
    await writeCheckpoint(run, (i) => layerTensors(pass, i), { writer, copied: pass.progress });
    const report = dataFreeReport(run, modelSha, pass.reports);
    const output = await finishRun(run, report);
    log.remove();
    return { output, report, wallSeconds: (performance.now() - t0) / 1000, peakRssMb: peakRssBytes() / 1024 ** 2 };
  } catch (e) {
    run.out.abort();
    // finished shards are kept for a rerun of the same command; a run that finished none leaves nothing
    if (log?.hasFinishedShards) run.warn(`the finished output shards are kept in ${log.dir}: rerun the same command to resume after them`);
    else log?.remove();
    throw e;
  } finally {
    await pool.close();
  }
}

/** The work folder: what identifies a data-free run (no data: the model, the scheme and what shapes the output's bytes). */
function openLog(run: Run, modelSha: string): ShardLog {
  const { opts } = run;
  return new ShardLog(
    run.out.target,
    {
      moecal_version: MOECAL_VERSION,
      model_sha256: modelSha,
      tokenizer: {},
      dataset_sha256: "",
      samples_sha256: "",
      options: {
        data_free: true,
        scheme: recipeName(run.recipe),
        group_size: run.schemes.map((s) => s.weights.groupSize),
        ignore: run.ignore,
        vllm_check: opts.vllmCheck ?? true,
        max_shard_bytes: opts.maxShardBytes ?? DEFAULT_SHARD_BYTES,
      },
    },
    opts.restart ?? false,
  );
}

function dataFreeReport(run: Run, modelSha: string, layers: LayerReport[]): OneshotReport {
  return {
    moecal_version: MOECAL_VERSION,
    model: { name: path.basename(path.resolve(run.modelDir)), sha256: modelSha },
    data_free: true,
    scheme: recipeName(run.recipe),
    recipe: recipeReport(run),
    method: recipeMethod(run.recipe),
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
}

/**
 * Progress in source bytes: every tensor the output is made of, counted when written (those an
 * earlier run wrote, at once); a "bytes" event after each.
 */
function progressCounter(run: Run, writer: ShardedWriter): (source: string) => void {
  const { ck, mapping, opts } = run;
  const sources = new Set([...mapping.sources.values(), ...mapping.unexpected]);
  const size = (n: string): number => {
    const t = ck.info(n);
    return t.end - t.begin;
  };
  let total = 0;
  for (const n of sources) total += size(n);
  const counted = new Set<string>();
  let done = 0;
  const count = (n: string): void => {
    if (!sources.has(n) || counted.has(n)) return;
    counted.add(n);
    done += size(n);
  };
  // what an earlier run finished: copied tensors by name, quantized weights by their first tensor
  for (const n of sources) {
    const base = n.endsWith(".weight") ? n.slice(0, -".weight".length) : null;
    if (writer.has(storedName(n, run.config)) || (base !== null && writer.has(storedName(`${base}.weight_scale`, run.config)))) count(n);
  }
  const resumed = done;
  return (n) => {
    count(n);
    opts.onProgress?.({ kind: "bytes", done, total, resumed });
  };
}

/**
 * Refuse a data-free run that cannot fit, before any work: disk for the output (exact, from the
 * plan's byte count) and the shard being assembled, less what a resumed work folder holds; memory
 * for the weights held at once (the plan's: a job per worker and one ahead) and the copy buffers,
 * beside the process itself.
 */
async function assertFits(run: Run): Promise<Plan> {
  const { opts, model, family, config, ck, recipe, schemeOf, methodOf } = run;
  const p = await plan(
    { ...opts, model: run.modelDir },
    { samples: [], opened: { family, config, ck, model, recipe, schemeOf, methodOf } },
  );
  const disk = p.disk.output + p.disk.shard_assembly;
  const free = freeDiskBytes(run.out.target) + workFolderBytes(run.out.target);
  const mib = (b: number): string => `${(b / 1024 ** 2).toFixed(1)} MiB`;
  if (disk > free)
    throw new UsageError(
      `the data-free run needs ${mib(disk)} of disk (output ${mib(p.disk.output)}, shard assembly ${mib(p.disk.shard_assembly)}), but the file system of ${run.out.target} has ${mib(free)} free; free some space or choose another --output`,
    );
  const peak = p.layers.reduce((a, l) => (l.peak_memory_bytes > a.peak_memory_bytes ? l : a), p.layers[0] as LayerPlan);
  const limit = opts.maxMemory ?? availableMemory();
  if (p.peak_memory_bytes > limit) {
    const { parameters: held, workers, retained: buffers } = peak.memory;
    throw new UsageError(
      `the data-free run needs ${mib(p.peak_memory_bytes)} of memory (the largest weights held at once ${mib(held)}, ${p.data_free?.workers} worker thread(s) ${mib(workers)}, copy buffers ${mib(buffers)}, beside the process itself: Node.js and onnxruntime, about ${mib(p.baseline_bytes)}), more than --max-memory ${mib(limit)}${workers > 0 ? "; fewer --workers need less" : ""}`,
    );
  }
  return p;
}

/** A layer's quantized Linears as jobs, in output order: one each, or NVFP4's fused sets together; those an earlier run wrote whole left out. */
function layerUnits(pass: Pass, linears: ReadonlyMap<string, Linear>): string[][] {
  const { run, writer } = pass;
  const done = (n: string): boolean => {
    const s = run.schemeOf(n) as Scheme;
    return requiredSuffixes(s.format, s.weights, s.inputActivations).every((x) => writer.has(storedName(`${n}.${x}`, run.config)));
  };
  const units: string[][] = [];
  const placed = new Set<string>();
  for (const name of linears.keys()) {
    if (placed.has(name)) continue;
    const scheme = run.schemeOf(name) as Scheme;
    const set = isNvfp4(scheme.weights) ? (run.sharedGlobalScale.find((s) => s.includes(name)) ?? [name]) : [name];
    const members = set.filter((m) => linears.has(m) && run.schemeOf(m) === scheme);
    for (const m of members) placed.add(m);
    if (!members.every(done)) units.push(members);
  }
  return units;
}

function job(run: Run, layer: number, members: readonly string[], linears: ReadonlyMap<string, Linear>): DataFreeJob {
  return {
    layer,
    scheme: run.schemeOf(members[0] as string) as Scheme,
    scaleDType: run.scaleDType,
    dir: run.ck.dir,
    members: members.map((name) => {
      const lin = linears.get(name) as Linear;
      const source = run.mapping.sources.get(`${name}.weight`) ?? `${name}.weight`;
      return { name, source, out: lin.outFeatures, inF: lin.inFeatures, stored: owned(run.ck.readStored(source)) };
    }),
  };
}

/**
 * Layer `i`'s output tensors in the calibrated path's order (its parameters in module order, a
 * quantized Linear's tensors in place of its weight). Jobs go to the pool up to `ahead` Linears
 * before the one being written; a stop asked for is honoured between tensors.
 */
async function* layerTensors(pass: Pass, i: number): AsyncGenerator<NamedRaw> {
  const { run, pool, writer } = pass;
  run.opts.onProgress?.({ kind: "layer", layer: i, layers: run.config.numHiddenLayers });
  const prefix = `model.layers.${i}`;
  const layer = run.model.model.layers.at(i);
  const linears = new Map<string, Linear>();
  for (const [n, m] of layer.namedModules(prefix)) if (m instanceof Linear && run.isTarget(n)) linears.set(n, m);
  const units = layerUnits(pass, linears);
  const unitOf = new Map(units.flatMap((u, k) => u.map((m) => [m, k] as const)));
  const results: (Promise<NamedRaw[]> | undefined)[] = [];
  const ready = new Map<string, NamedRaw[]>();
  const submitThrough = async (k: number): Promise<void> => {
    for (let u = results.length; u <= Math.min(k, units.length - 1); u++)
      results.push((await pool.submit(() => job(run, i, units[u] as string[], linears))).result);
  };
  for (const [n] of layer.namedParameters(prefix)) {
    await safePoint();
    const name = n.endsWith(".weight") ? n.slice(0, -".weight".length) : "";
    const k = unitOf.get(name);
    if (k !== undefined) {
      if (!ready.has(name)) {
        await submitThrough(k + pass.ahead);
        const tensors = await (results[k] as Promise<NamedRaw[]>);
        results[k] = undefined;
        for (const m of units[k] as string[])
          ready.set(
            m,
            tensors.filter((t) => t.name.startsWith(`${m}.`)),
          );
      }
      yield* ready.get(name) as NamedRaw[];
      ready.delete(name);
      pass.progress(run.mapping.sources.get(n) ?? n);
    } else if (!linears.has(name)) {
      const src = run.mapping.sources.get(n) ?? n;
      if (writer.has(storedName(src, run.config))) continue;
      yield { name: src, ...run.ck.readRaw(src) };
      pass.progress(src);
    }
  }
  const summary: LayerReport = {
    layer: i,
    min_routed: null,
    median_routed: null,
    experts_without_rows: 0,
    quantized_linears: linears.size,
    fallbacks: 0,
    gptq_loss: 0,
  };
  pass.reports.push(summary);
  run.opts.onProgress?.({ kind: "layer-done", layer: i, summary });
}

import { Tensor } from "../engine/tensor.js";
import { checkStop } from "../util/interrupt.js";
import { InternalError, NumericalError } from "../errors.js";
import type { HessianStats } from "../calibration/observers.js";
import type { Linear } from "../nn/layers.js";
import { type GptqResult, prepareGptq, rtnQuantize, sharedPrep } from "../quantization/gptq.js";
import {
  type GptqJob,
  type GptqPool,
  closeSharedGptqPool,
  gptqWorkerCount,
  renewSharedGptqPool,
  sharedGptqPool,
} from "../quantization/gptq-pool.js";
import { type QuantizedWeight, type ScaleDType, absMax, dequantize, nvfp4GlobalScale, roundScale } from "../quantization/params.js";
import { type Scheme, hasStaticActivationScales, isNvfp4 } from "../quantization/scheme.js";
import { FP8_E4M3_MAX } from "../engine/dtype.js";
import { firstNonFiniteF32 } from "../io/safetensors.js";

export type { Method } from "../quantization/recipe.js";
import type { Method } from "../quantization/recipe.js";

export interface Fallback {
  module: string;
  reason: "no-calibration-rows" | "cholesky-failed" | "no-activation-rows";
  /** what was done instead */
  action: string;
}

export interface QuantizedLinear {
  name: string;
  weight: QuantizedWeight;
  /** static input scale (FP8 static) or input global scale (NVFP4), else null */
  inputScale: number | null;
  /** GPTQ loss estimate (0 for RTN) */
  loss: number;
  rows: number;
}

export interface LayerTargets {
  /** dotted name -> Linear */
  linears: Map<string, Linear>;
  hessians: Map<string, HessianStats>;
  /** dotted name -> max |x| over calibration rows (static activation schemes) */
  inputAbsMax: Map<string, { absmax: number; rows: number }>;
  /** Linears vLLM runs as one weight, which must share NVFP4's global scale (q/k/v, gate/up) */
  sharedGlobalScale?: readonly (readonly string[])[];
}

/** GPTQ preparations of shared Hessians (by the Hessian array, then the activation order and block size), reused by later calls. */
export type PrepCache = Map<Float32Array, Map<string, GptqJob["prep"]>>;

/** Layers with fewer GPTQ weights than this are quantized on the main thread (starting workers costs more than it saves there). */
export const GPTQ_WORKER_MIN_WEIGHTS = 4 * 1024 * 1024;

/** GPTQ worker threads for a layer with `weights` GPTQ weights (0: the main thread). */
export function gptqPoolSize(weights: number, workers?: number): number {
  return weights >= GPTQ_WORKER_MIN_WEIGHTS ? gptqWorkerCount(workers) : 0;
}

const EMPTY: Float32Array = new Float32Array(0);

/** Rows of Linears sharing one Hessian quantized together in one GPTQ pass. */
const GPTQ_STACK_ROWS = 2048;

interface Quantized {
  weight: QuantizedWeight;
  dequantized: Float32Array | null;
  loss: number;
}

/** Split a stacked GPTQ result into its members' rows (views of the stacked arrays, not copies). */
function sliceResult(r: GptqResult, rowStart: number, rows: number): Quantized {
  const { inF, params, args } = r.weight;
  const g = params.groups;
  return {
    weight: {
      args,
      out: rows,
      inF,
      codes: r.weight.codes.subarray(rowStart * inF, (rowStart + rows) * inF),
      params: {
        groups: g,
        groupSize: params.groupSize,
        scale: params.scale.slice(rowStart * g, (rowStart + rows) * g),
        zeroPoint: params.zeroPoint ? params.zeroPoint.slice(rowStart * g, (rowStart + rows) * g) : null,
        ...(params.nvfp4
          ? {
              nvfp4: {
                groupScale: params.nvfp4.groupScale.slice(rowStart * g, (rowStart + rows) * g),
                globalScale: params.nvfp4.globalScale.slice(rowStart, rowStart + rows),
              },
            }
          : {}),
      },
    },
    dequantized: r.dequantized.subarray(rowStart * inF, (rowStart + rows) * inF),
    loss: r.rowLoss.subarray(rowStart, rowStart + rows).reduce((x, y) => x + y, 0),
  };
}

/**
 * Quantize every target Linear of a layer and replace its weight by the dequantized values
 * (so the next layer's inputs carry this layer's quantization error). Linears whose Hessian
 * is the same array (the all-experts fast path's shared gate/up statistics) share one damped
 * Cholesky and are quantized stacked, GPTQ_STACK_ROWS rows at a time (rows are independent
 * given the Hessian). A Linear that saw no calibration rows falls back to round-to-nearest
 * (GPTQ) or to its siblings' largest input scale (static activations); every fallback is
 * returned (and warned, when `warn` is given).
 */
export async function quantizeLayerLinears(
  t: LayerTargets,
  schemeOf: (linear: string) => Scheme,
  methodOf: (linear: string) => Method,
  scaleDType: ScaleDType,
  opts: {
    dampening: number;
    blockSize: number;
    warn?: (msg: string) => void;
    layerLabel: string;
    workers?: number;
    preps?: PrepCache;
    /** where GPTQ jobs run (default: the process's threads; a distributed run's: workers, gptq-jobs.ts) */
    pool?: Pick<GptqPool, "submit">;
    /**
     * the caller's next GPTQ call has these Linears' widths (the next expert group of a layer): the
     * shared pool's workers are kept for it rather than renewed
     */
    keepWorkers?: boolean;
  },
): Promise<{ results: QuantizedLinear[]; fallbacks: Fallback[] }> {
  const fallbacks: Fallback[] = [];
  const done = new Map<string, Quantized>();
  const globals = globalScales(t, scaleDType, schemeOf);
  /** each row's NVFP4 global scale for a Linear (undefined for other schemes) */
  const rowGlobal = (name: string, rows: number): Float32Array | undefined =>
    globals.has(name) ? new Float32Array(rows).fill(globals.get(name) as number) : undefined;
  const rtn = (name: string, lin: Linear): Quantized => ({
    weight: rtnQuantize(
      lin.weight.data,
      lin.outFeatures,
      lin.inFeatures,
      schemeOf(name).weights,
      scaleDType,
      name,
      rowGlobal(name, lin.outFeatures),
    ),
    dequantized: null,
    loss: 0,
  });
  /** Linears whose damped Hessian is not positive definite: round-to-nearest, recorded. */
  const choleskyFallback = (linears: [string, Linear][]): void => {
    for (const [name, lin] of linears) {
      fallbacks.push({ module: name, reason: "cholesky-failed", action: "round-to-nearest" });
      done.set(name, rtn(name, lin));
    }
  };
  // GPTQ groups: Linears sharing one Hessian and one scheme (each group's Hessian is made when its
  // jobs are submitted, so that the first jobs start while the main thread makes the later ones)
  const groups = new Map<object, Map<Scheme, [string, Linear][]>>();
  for (const [name, lin] of t.linears) {
    const stats = t.hessians.get(name);
    if (methodOf(name) !== "gptq") continue;
    if (!stats || stats.rows === 0) {
      fallbacks.push({ module: name, reason: "no-calibration-rows", action: "round-to-nearest" });
      done.set(name, rtn(name, lin));
      continue;
    }
    const key = stats.hessianKey();
    const byScheme = groups.get(key) ?? new Map<Scheme, [string, Linear][]>();
    groups.set(key, byScheme);
    const g = byScheme.get(schemeOf(name));
    if (g) g.push([name, lin]);
    else byScheme.set(schemeOf(name), [[name, lin]]);
  }
  // GPTQ's column loop is single-threaded JavaScript: large layers go to worker threads
  let work = 0;
  for (const byScheme of groups.values()) for (const members of byScheme.values()) for (const [, lin] of members) work += lin.weight.size;
  const own = opts.pool ? null : await sharedGptqPool(gptqPoolSize(work, opts.workers));
  const pool = opts.pool ?? (own as GptqPool);
  // the process's workers take their stacks in shared memory: a stack moved to a worker and back
  // each job made V8 collect the whole heap every few jobs (docs/performance.md)
  const newStack = (n: number): Float32Array =>
    own && own.size > 0 ? new Float32Array(new SharedArrayBuffer(4 * n)) : new Float32Array(n);
  const jobs: Promise<void>[] = [];
  /** the first job failure that is not a failed factorisation: no job is submitted after it, and it is thrown once all have ended */
  let failure: { error: unknown } | null = null;
  // stacking buffers, recycled between jobs: fresh ones cost page faults (~400 MB per Nano layer)
  const freeStacks: Float32Array[] = [];
  try {
    for (const [scheme, members] of [...groups.values()].flatMap((byScheme) => [...byScheme])) {
      if (failure) break;
      const [first, firstLin] = members[0] as [string, Linear];
      // a Linear's own Hessian is made into a new array its job takes along, and prepared there; one
      // shared by several Linears is made once, kept, and prepared here
      const H = members.length === 1 ? (t.hessians.get(first) as HessianStats).takeH() : sharedHessian(t, members);
      assertFiniteStats(H, `${opts.layerLabel}: ${first}: calibration Hessian`);
      let prep: GptqJob["prep"] = { hessian: H, inF: firstLin.inFeatures, dampening: opts.dampening, blockSize: opts.blockSize };
      if (members.length > 1) {
        try {
          const key = `${scheme.weights.actorder}/${opts.blockSize}`;
          const cached = opts.preps?.get(H)?.get(key);
          prep =
            cached ?? sharedPrep(await prepareGptq(H, firstLin.inFeatures, scheme.weights.actorder, first, opts.dampening, opts.blockSize));
          if (opts.preps && !cached) opts.preps.set(H, (opts.preps.get(H) ?? new Map()).set(key, prep));
        } catch (e) {
          if (!(e instanceof NumericalError)) throw e;
          choleskyFallback(members);
          continue;
        }
      }
      for (let i = 0; i < members.length && !failure; ) {
        const batch: [string, Linear][] = [];
        let rows = 0;
        while (i < members.length && (batch.length === 0 || rows + (members[i] as [string, Linear])[1].outFeatures <= GPTQ_STACK_ROWS)) {
          const m = members[i++] as [string, Linear];
          batch.push(m);
          rows += m[1].outFeatures;
        }
        const label =
          batch.length === 1 ? (batch[0] as [string, Linear])[0] : `${(batch[0] as [string, Linear])[0]} and ${batch.length - 1} more`;
        const jobPrep = prep;
        checkStop(); // a stop asked for: no further job starts; those running finish first
        // the stacked copy is made only when a worker is free to take it, in a recycled buffer
        let stacked = EMPTY;
        const job = await pool.submit(() => {
          const n = rows * firstLin.inFeatures;
          const k = freeStacks.findIndex((b) => b.length === n);
          stacked = k >= 0 ? (freeStacks.splice(k, 1)[0] as Float32Array) : newStack(n);
          let off = 0;
          for (const [, lin] of batch) {
            stacked.set(lin.weight.data, off);
            off += lin.weight.size;
          }
          let globalScale: Float32Array | undefined;
          if (globals) {
            globalScale = new Float32Array(rows);
            let r = 0;
            for (const [name, lin] of batch) {
              globalScale.fill(globals.get(name) as number, r, r + lin.outFeatures);
              r += lin.outFeatures;
            }
          }
          return {
            globalScale,
            weight: stacked,
            out: rows,
            prep: jobPrep,
            args: scheme.weights,
            dtype: scaleDType,
            name: label,
          };
        });
        jobs.push(
          job.result
            .then(
              (r) => {
                let r0 = 0;
                for (const [name, lin] of batch) {
                  // the dequantized rows go back into the Linear's own array; the stack is reused
                  const q = sliceResult(r, r0, lin.outFeatures);
                  lin.weight.data.set(q.dequantized as Float32Array);
                  done.set(name, { ...q, dequantized: lin.weight.data });
                  r0 += lin.outFeatures;
                }
                // a shared stack is the result's memory (kept as this thread's object); a moved one came back as the result
                freeStacks.push(stacked.buffer instanceof SharedArrayBuffer ? stacked : r.dequantized);
              },
              (e: unknown) => {
                if (e instanceof NumericalError) choleskyFallback(batch);
                else failure ??= { error: e };
              },
            )
            // every job's promise is handled here, so a failure never surfaces as an unhandled rejection
            .catch((e: unknown) => {
              failure ??= { error: e };
            }),
        );
      }
    }
  } catch (e) {
    failure ??= { error: e };
  }
  await Promise.all(jobs);
  if (failure) {
    await closeSharedGptqPool(); // jobs may still run there; the next layer starts a fresh pool
    throw failure.error;
  }
  // the next layer's GPTQ does not find this one's memory in the workers
  if (!opts.keepWorkers) await renewSharedGptqPool(pool);
  const siblingMax = siblingAbsMax(t);
  const results: QuantizedLinear[] = [];
  for (const [name, lin] of t.linears) {
    const q = done.get(name) ?? rtn(name, lin);
    const rows = t.hessians.get(name)?.rows ?? t.inputAbsMax.get(name)?.rows ?? 0;
    let inputScale: number | null = null;
    if (hasStaticActivationScales(schemeOf(name))) {
      const a = t.inputAbsMax.get(name);
      if (!a || a.rows === 0)
        fallbacks.push({ module: name, reason: "no-activation-rows", action: "largest input scale of the layer's other Linears" });
      inputScale = staticInputScale(schemeOf(name), a && a.rows > 0 ? a.absmax : siblingMax, scaleDType);
    }
    assertValidQParams(q.weight, `${opts.layerLabel}: ${name}`);
    lin.parameter("weight").value = new Tensor(q.dequantized ?? dequantize(q.weight), [lin.outFeatures, lin.inFeatures]);
    results.push({ name, weight: q.weight, inputScale, loss: q.loss, rows });
  }
  if (opts.warn) warnFallbacks(opts.warn, opts.layerLabel, fallbacks);
  return { results, fallbacks };
}

/** One warning naming the Linears of a layer that fell back (none: no warning). */
export function warnFallbacks(warn: (msg: string) => void, layerLabel: string, fallbacks: readonly Fallback[]): void {
  if (fallbacks.length === 0) return;
  const names = [...new Set(fallbacks.map((f) => f.module))];
  warn(
    `${layerLabel}: ${names.length} Linear layer(s) saw no calibration rows or failed GPTQ and fell back: ${names.slice(0, 6).join(", ")}${names.length > 6 ? ", ..." : ""}`,
  );
}

/** The static input scale (FP8, INT8) or input global scale (NVFP4) of a Linear whose inputs reached `absmax`. */
export function staticInputScale(scheme: Scheme, absmax: number, scaleDType: ScaleDType): number {
  if (scheme.inputActivations && isNvfp4(scheme.inputActivations)) return nvfp4GlobalScale(absmax, scaleDType);
  return roundScale(Math.fround((absmax > 0 ? absmax : 1) / FP8_E4M3_MAX), scaleDType);
}

/** The largest input magnitude over the Linears of `t` that saw rows (0: none did): a Linear that saw none takes it. */
export function siblingAbsMax(t: Pick<LayerTargets, "inputAbsMax">): number {
  return Math.max(0, ...[...t.inputAbsMax.values()].filter((v) => v.rows > 0).map((v) => v.absmax));
}

/**
 * NVFP4 global scale of each target Linear from its weight's largest magnitude; Linears vLLM runs
 * as one weight share the smallest of their scales (llm-compressor's fused global scales).
 */
function globalScales(t: LayerTargets, dtype: ScaleDType, schemeOf: (linear: string) => Scheme): Map<string, number> {
  const g = new Map<string, number>();
  for (const [name, lin] of t.linears) if (isNvfp4(schemeOf(name).weights)) g.set(name, nvfp4GlobalScale(absMax(lin.weight.data), dtype));
  for (const members of t.sharedGlobalScale ?? []) {
    const present = members.filter((m) => g.has(m));
    for (const scheme of new Set(present.map(schemeOf))) {
      const same = present.filter((m) => schemeOf(m) === scheme);
      const shared = Math.min(...same.map((m) => g.get(m) as number));
      for (const m of same) g.set(m, shared);
    }
  }
  return g;
}

/** The one Hessian array of a GPTQ group (Linears grouped by `HessianStats.hessianKey`). */
function sharedHessian(t: LayerTargets, members: readonly [string, Linear][]): Float32Array {
  const arrays = members.map(([name]) => (t.hessians.get(name) as HessianStats).H);
  const H = arrays[0] as Float32Array;
  if (arrays.some((a) => a !== H))
    throw new InternalError(`GPTQ: ${members[0]?.[0]} and the Linears grouped with it have different Hessians`);
  return H;
}

function assertFiniteStats(values: Float32Array, where: string): void {
  const i = firstNonFiniteF32(values);
  if (i >= 0) throw new NumericalError(`${where} has a non-finite value ${values[i]} at flat index ${i}; refusing to quantize`);
}

/** Scales finite and positive, zero points in range: checked before anything is written. */
export function assertValidQParams(q: QuantizedWeight, where: string): void {
  const { scale, zeroPoint } = q.params;
  for (let i = 0; i < scale.length; i++) {
    const s = scale[i] as number;
    if (!Number.isFinite(s) || s <= 0) throw new NumericalError(`${where}: invalid weight scale ${s} at index ${i}`);
  }
  if (zeroPoint) {
    const lim = 2 ** (q.args.numBits - 1);
    for (let i = 0; i < zeroPoint.length; i++) {
      const z = zeroPoint[i] as number;
      if (!(z >= -lim && z < lim))
        throw new NumericalError(`${where}: zero point ${z} at index ${i} outside the ${q.args.numBits}-bit range`);
    }
  }
}

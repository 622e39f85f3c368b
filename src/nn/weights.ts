/** Loading a checkpoint's tensors into a module tree's parameters, whatever the model family. */
import { Tensor, numel } from "../engine/tensor.js";
import { NumericalError, WeightMappingError } from "../errors.js";
import type { Checkpoint } from "../io/checkpoint.js";
import { loadJobReads, sharedLoadPool } from "../io/load-pool.js";
import { DTYPE_BYTES, convertedFinite, firstNonFiniteF32 } from "../io/safetensors.js";
import type { TensorSource } from "../io/tensor-source.js";
import { ownsBuffer } from "../util/worker-pool.js";
import type { AnyModule, Parameter } from "./module.js";

export interface WeightMapping {
  /** model parameter name -> checkpoint tensor name */
  sources: Map<string, string>;
  missing: string[];
  unexpected: string[];
  /** "name: checkpoint [a, b] vs model [c, d]" */
  wrongShape: string[];
}

export function checkpointShapes(ck: Checkpoint): Map<string, number[]> {
  return new Map(ck.names().map((n) => [n, ck.info(n).shape]));
}

/**
 * Pure: match the model's parameters (name and shape) against the checkpoint's tensors when the
 * module names are the checkpoint's names, as in Hugging Face models: the identity, except
 * `lm_head.weight`, which falls back to `model.embed_tokens.weight` when embeddings are tied.
 */
export function mapWeightsByName(
  config: { tieWordEmbeddings: boolean },
  expected: ReadonlyArray<readonly [string, readonly number[]]>,
  available: ReadonlyMap<string, readonly number[]>,
): WeightMapping {
  const sources = new Map<string, string>();
  const missing: string[] = [];
  const wrongShape: string[] = [];
  const used = new Set<string>();
  for (const [name, shape] of expected) {
    let src = available.has(name) ? name : null;
    if (!src && name === "lm_head.weight" && config.tieWordEmbeddings && available.has("model.embed_tokens.weight")) {
      src = "model.embed_tokens.weight";
    }
    if (!src) {
      missing.push(name);
      continue;
    }
    used.add(src);
    const got = available.get(src) as readonly number[];
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      wrongShape.push(`${src}: checkpoint [${got.join(", ")}] vs model [${shape.join(", ")}]`);
      continue;
    }
    sources.set(name, src);
  }
  // rotary inverse frequencies are buffers some exporters save; they are recomputed here
  const unexpected = [...available.keys()].filter((n) => !used.has(n) && !n.endsWith("rotary_emb.inv_freq"));
  return { sources, missing, unexpected, wrongShape };
}

/** Raise on missing or misshapen tensors (unexpected ones are returned for a warning). */
export function assertMappingComplete(m: WeightMapping, where: string): void {
  const problems: string[] = [];
  if (m.missing.length)
    problems.push(`missing tensors: ${m.missing.slice(0, 5).join(", ")}${m.missing.length > 5 ? ` and ${m.missing.length - 5} more` : ""}`);
  if (m.wrongShape.length) problems.push(`wrong shapes: ${m.wrongShape.slice(0, 5).join("; ")}`);
  if (problems.length) throw new WeightMappingError(`${where}: ${problems.join("; ")}`);
}

export function assertFinite(t: Tensor, where: string): void {
  if (convertedFinite(t.data)) return;
  const i = firstNonFiniteF32(t.data);
  if (i >= 0)
    throw new NumericalError(`${where}: value ${t.data[i]} at flat index ${i} (of ${t.size}); the checkpoint holds non-finite weights`);
}

/**
 * Float32 arrays of unloaded parameters, for the next load of parameters of the same sizes (a
 * model's layers): memory written before costs no page faults. Only arrays a load with this
 * recycler made, and that their parameter still holds when unloaded, come back, and only until the
 * next load: the one who streams the layers passes it where nothing else keeps a loaded array past
 * its unload.
 */
export class WeightRecycler {
  private readonly free = new Map<number, Float32Array[]>();
  private readonly made = new WeakSet<Float32Array>();

  /** A free array of `n` floats, if any. */
  take(n: number): Float32Array | undefined {
    return this.free.get(n)?.pop();
  }

  /** `a` was loaded through this recycler. */
  loaded(a: Float32Array): void {
    this.made.add(a);
  }

  /** Let go of the free arrays a load did not take (another layer's sizes are not kept for later). */
  dropFree(): void {
    this.free.clear();
  }

  /** `a`'s parameter was unloaded: free it for the next load, if this recycler made it. */
  give(a: Float32Array): void {
    if (!this.made.delete(a)) return;
    const list = this.free.get(a.length) ?? [];
    list.push(a);
    this.free.set(a.length, list);
  }
}

/** The checkpoint tensor a parameter loads from. */
function sourceOf(mapping: WeightMapping, source: TensorSource, name: string): string {
  const src = mapping.sources.get(name);
  if (!src) throw new WeightMappingError(`${source.dir}: no tensor for parameter "${name}"`);
  return src;
}

function assertSize(source: TensorSource, src: string, values: number, name: string, p: Parameter): void {
  if (values !== numel(p.shape))
    throw new WeightMappingError(`${source.dir}: tensor "${src}" has ${values} values, "${name}" needs ${numel(p.shape)}`);
}

/** `t` as `p`'s value, checked finite unless its reader found it so. */
function place(p: Parameter, t: Tensor, where: string, finite: boolean, recycler?: WeightRecycler): void {
  if (!finite) assertFinite(t, where);
  p.value = t.reshape(p.shape);
  recycler?.loaded(t.data);
}

/** One parameter read on this thread (into `spare` where the source can), checked and placed. */
function loadHere(source: TensorSource, src: string, name: string, p: Parameter, spare?: Float32Array, recycler?: WeightRecycler): void {
  const t = source.readF32(src, spare);
  assertSize(source, src, t.size, name, p);
  place(p, t, `${source.dir}: tensor "${src}"`, false, recycler);
}

/**
 * Load parameters of `root` (named with `prefix`) whose names pass `filter` from `source`, into
 * the recycler's free arrays when given. Checks shapes and finiteness; returns the number of tensors loaded.
 */
export function loadParameters(
  root: AnyModule,
  source: TensorSource,
  mapping: WeightMapping,
  filter: (name: string) => boolean = () => true,
  prefix = "",
  recycler?: WeightRecycler,
): number {
  let n = 0;
  for (const [name, p] of root.namedParameters(prefix)) {
    if (!filter(name)) continue;
    loadHere(source, sourceOf(mapping, source, name), name, p, recycler?.take(numel(p.shape)), recycler);
    n++;
  }
  recycler?.dropFree();
  return n;
}

/** Stored bytes from which loadParametersAsync reads on worker threads (below: as loadParameters). */
export const PARALLEL_LOAD_BYTES = 64 * 1024 ** 2;

/**
 * loadParameters with the tensors read and converted on worker threads (load-pool.ts), several at
 * once, when the source can say where they lie and they hold at least `parallelFrom` bytes; the
 * same checks and errors, the same values. A recycled array moves to a worker and back.
 */
export async function loadParametersAsync(
  root: AnyModule,
  source: TensorSource,
  mapping: WeightMapping,
  filter: (name: string) => boolean = () => true,
  prefix = "",
  recycler?: WeightRecycler,
  parallelFrom = PARALLEL_LOAD_BYTES,
): Promise<number> {
  const params = root.namedParameters(prefix).filter(([name]) => filter(name));
  const located = params.map(([name, p]) => {
    const src = sourceOf(mapping, source, name);
    const at = source.locate?.(src) ?? null;
    return { name, p, src, at: at && loadJobReads(at) ? at : null };
  });
  const bytes = located.reduce((a, { at }) => a + (at ? numel(at.shape) * DTYPE_BYTES[at.dtype] : 0), 0);
  if (bytes < parallelFrom) return loadParameters(root, source, mapping, filter, prefix, recycler);
  const pool = sharedLoadPool();
  const jobs: Promise<void>[] = [];
  try {
    for (const { name, p, src, at } of located) {
      const spare = recycler?.take(numel(p.shape));
      if (!at) {
        loadHere(source, src, name, p, spare, recycler);
        continue;
      }
      assertSize(source, src, numel(at.shape), name, p);
      // made here, not on the worker (load-pool.ts); only an array that is its whole buffer can move
      const into = spare && ownsBuffer(spare) ? spare : new Float32Array(numel(p.shape));
      const { result } = await pool.submit(() => ({ at, into }));
      jobs.push(result.then((r) => place(p, new Tensor(r.data, at.shape), `${source.dir}: tensor "${src}"`, r.finite, recycler)));
    }
  } finally {
    // no job is left running when one fails or a check throws
    await Promise.allSettled(jobs);
  }
  await Promise.all(jobs);
  recycler?.dropFree();
  return params.length;
}

/** Drop loaded parameter values (to stream a model layer by layer); the recycler, when given, gets back the arrays it loaded. */
export function unloadParameters(
  root: AnyModule,
  filter: (name: string) => boolean = () => true,
  prefix = "",
  recycler?: WeightRecycler,
): void {
  for (const [name, p] of root.namedParameters(prefix)) {
    if (!filter(name)) continue;
    if (p.value && recycler) recycler.give(p.value.data);
    p.value = null;
  }
}

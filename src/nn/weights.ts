/** Loading a checkpoint's tensors into a module tree's parameters, whatever the model family. */
import { type Tensor, numel } from "../engine/tensor.js";
import { NumericalError, WeightMappingError } from "../errors.js";
import type { Checkpoint } from "../io/checkpoint.js";
import { convertedFinite, firstNonFiniteF32 } from "../io/safetensors.js";
import type { TensorSource } from "../io/tensor-source.js";
import type { AnyModule } from "./module.js";

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
    const src = mapping.sources.get(name);
    if (!src) throw new WeightMappingError(`${source.dir}: no tensor for parameter "${name}"`);
    const t = source.readF32(src, recycler?.take(numel(p.shape)));
    if (numel(t.shape) !== numel(p.shape))
      throw new WeightMappingError(`${source.dir}: tensor "${src}" has ${t.size} values, "${name}" needs ${numel(p.shape)}`);
    assertFinite(t, `${source.dir}: tensor "${src}"`);
    p.value = t.reshape(p.shape);
    recycler?.loaded(t.data);
    n++;
  }
  recycler?.dropFree();
  return n;
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

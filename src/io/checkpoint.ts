import path from "node:path";
import { CheckpointFormatError, asFormatError } from "../errors.js";
import { confinedFile, entryExists } from "./files.js";
import { readJsonObject } from "./json.js";
import type { Tensor } from "../engine/tensor.js";
import { giveBuffer, takeBuffer } from "../engine/scratch.js";
import { type Fp8BlockFormat, Fp8BlockWeights, type Fp8Stored, fp8BlockRows } from "./fp8-blocks.js";
import {
  DTYPE_BYTES,
  LIMITS,
  type RawTensor,
  SafetensorsFile,
  type StoredLocation,
  type TensorInfo,
  isPlainTensorName,
  rawToF32,
} from "./safetensors.js";

export const INDEX_FILE = "model.safetensors.index.json";
const SINGLE_FILE = "model.safetensors";

/**
 * The weights of a checkpoint folder: one `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`. Shard headers are parsed when the folder is opened;
 * tensor data is read on demand.
 */
export class Checkpoint {
  readonly dir: string;
  private readonly files = new Map<string, SafetensorsFile>();
  private readonly where = new Map<string, SafetensorsFile>();
  /** weights presented decoded: FP8 blocks or compressed-tensors (null: every tensor as stored) */
  private decoded: DecodedWeights | null = null;
  /** tensors presented under other names, or parts of one (presentLayout) */
  private readonly views = new Map<string, { file: SafetensorsFile; info: TensorInfo }>();
  /** stored names replaced by views */
  private readonly hidden = new Set<string>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * Tensors the folder holds that its index does not account for: names found in more than one
   * shard, or in a shard under a name the index maps elsewhere or not at all. Readers see only
   * the index's choice; `inspect` reports these and the loaders refuse them.
   */
  readonly anomalies: string[] = [];

  static open(dir: string): Checkpoint {
    const ck = new Checkpoint(dir);
    const indexPath = path.join(dir, INDEX_FILE);
    if (entryExists(indexPath)) {
      const map = readIndex(confinedFile(dir, INDEX_FILE, asFormatError), indexPath);
      for (const [name, shard] of Object.entries(map)) {
        let f = ck.files.get(shard);
        if (!f) {
          if (path.basename(shard) !== shard || shard === "." || shard === "..")
            throw new CheckpointFormatError(`${indexPath}: shard name "${shard}" must be a plain file name`);
          const shardPath = path.join(dir, shard);
          if (!entryExists(shardPath)) {
            throw new CheckpointFormatError(`${indexPath}: shard "${shard}" (holding "${name}") does not exist`);
          }
          confinedFile(dir, shard, asFormatError);
          f = SafetensorsFile.open(shardPath);
          ck.files.set(shard, f);
        }
        if (!f.tensors.has(name)) {
          throw new CheckpointFormatError(`${indexPath}: tensor "${name}" is mapped to "${shard}" but that shard does not hold it`);
        }
        ck.where.set(name, f);
      }
      for (const [shard, f] of ck.files) {
        for (const name of f.tensors.keys()) {
          const owner = ck.where.get(name);
          if (owner !== f)
            ck.anomalies.push(
              owner
                ? `tensor "${name}" is in ${shard} and in ${path.basename(owner.file)} (the index names the latter)`
                : `tensor "${name}" is in ${shard} but not in ${INDEX_FILE}`,
            );
        }
      }
      return ck;
    }
    const single = path.join(dir, SINGLE_FILE);
    if (!entryExists(single)) {
      throw new CheckpointFormatError(`${dir}: neither ${INDEX_FILE} nor ${SINGLE_FILE} found`);
    }
    confinedFile(dir, SINGLE_FILE, asFormatError);
    const f = SafetensorsFile.open(single);
    ck.files.set(SINGLE_FILE, f);
    for (const name of f.tensors.keys()) ck.where.set(name, f);
    return ck;
  }

  /** Refuse a folder whose shards hold tensors the index does not account for. */
  assertNoAnomalies(): void {
    if (this.anomalies.length)
      throw new CheckpointFormatError(
        `${this.dir}: ${this.anomalies.length} tensor(s) not accounted for by the index: ${this.anomalies.slice(0, 3).join("; ")}`,
      );
  }

  /** The weight files opened, relative to the folder. */
  weightFiles(): string[] {
    return [...this.files.keys()];
  }

  /**
   * Present the stored names as the model's (before any other presentation): a text model stored
   * under `modelPrefix` (Qwen3.5's `model.language_model.`) as `model.`, and routed experts stored
   * fused as 3-D tensors (`P.experts.gate_up_proj` [E, 2I, H], `P.experts.down_proj` [E, H, I], as
   * Qwen3.5 and transformers 5 store them) as per-expert 2-D weights `P.experts.{e}.{gate,up,down}_proj.weight`,
   * each a view of its bytes (nothing copied). Names `keep` accepts stay as stored (tensors copied
   * byte for byte: an MTP head, a vision tower).
   */
  presentLayout(opts: { modelPrefix?: string | undefined; keep?: (stored: string) => boolean }): void {
    const prefix = opts.modelPrefix;
    const add = (name: string, file: SafetensorsFile, info: TensorInfo, stored: string): void => {
      if (this.where.has(name) || this.views.has(name))
        throw new CheckpointFormatError(`${this.dir}: tensor "${stored}" would be read as "${name}", which the folder also holds`);
      this.views.set(name, { file, info: { ...info, name } });
      this.hidden.add(stored);
    };
    for (const [stored, f] of this.where) {
      if (opts.keep?.(stored)) continue;
      const t = f.info(stored);
      const name = prefix && stored.startsWith(prefix) ? `model.${stored.slice(prefix.length)}` : stored;
      const fused = /^(.*\.experts)\.(gate_up_proj|down_proj)$/.exec(name);
      if (fused && t.shape.length === 3) {
        const [E, rows, cols] = t.shape as [number, number, number];
        const size = DTYPE_BYTES[t.dtype];
        const up = fused[2] === "gate_up_proj";
        if (up && rows % 2 !== 0)
          throw new CheckpointFormatError(`${this.dir}: tensor "${stored}" [${t.shape.join(", ")}] does not split into gate and up halves`);
        const parts = up ? (["gate_proj", "up_proj"] as const) : (["down_proj"] as const);
        const r = rows / parts.length;
        for (let e = 0; e < E; e++)
          parts.forEach((p, i) => {
            const begin = t.begin + (e * rows + i * r) * cols * size;
            add(`${fused[1]}.${e}.${p}.weight`, f, { ...t, shape: [r, cols], begin, end: begin + r * cols * size }, stored);
          });
        this.hidden.add(stored);
      } else if (name !== stored) add(name, f, t, stored);
    }
  }

  /**
   * Present FP8 block-scaled weights as plain ones (every weight and scale checked now): float32
   * when read as float32, `format.dtype` when read as bytes; their `weight_scale_inv` tensors hidden.
   */
  presentFp8Blocks(format: Fp8BlockFormat): void {
    this.presentDecoded((raw) => new Fp8BlockWeights(raw, format));
  }

  /**
   * Present weights stored in another form decoded (`make` builds the presenter from the tensors
   * as stored, after presentLayout): FP8 blocks or a compressed-tensors checkpoint's quantized Linears.
   */
  presentDecoded(make: (raw: RawAccess) => DecodedWeights): void {
    this.decoded = make({
      dir: this.dir,
      names: () => this.storedNames(),
      info: (n: string) => this.rawInfo(n),
      readRaw: (n) => this.rawRead(n),
      locate: (n) => this.rawLocate(n),
    });
  }

  /** Names after presentLayout, before FP8 presentation. */
  private storedNames(): string[] {
    return [...this.where.keys()].filter((n) => !this.hidden.has(n)).concat([...this.views.keys()]);
  }

  names(): string[] {
    const all = this.storedNames();
    return this.decoded ? this.decoded.names(all) : all;
  }

  has(name: string): boolean {
    if (this.decoded?.has(name)) return true;
    return (this.views.has(name) || (this.where.has(name) && !this.hidden.has(name))) && !this.decoded?.hides(name);
  }

  private file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f || this.hidden.has(name)) throw new CheckpointFormatError(`${this.dir}: checkpoint has no tensor "${name}"`);
    return f;
  }

  private rawInfo(name: string): TensorInfo {
    return this.views.get(name)?.info ?? this.file(name).info(name);
  }

  /** The stored bytes of `name`, into `into` when given (exactly as many bytes). */
  private rawRead(name: string, into?: Uint8Array): RawTensor {
    const v = this.views.get(name);
    const f = v?.file ?? this.file(name);
    return f.readRawOf(v?.info ?? f.info(name), into);
  }

  info(name: string): TensorInfo {
    return this.decoded?.has(name) ? this.decoded.info(name) : this.rawInfo(name);
  }

  readRaw(name: string): RawTensor {
    return this.decoded?.has(name) ? this.decoded.readRaw(name) : this.rawRead(name);
  }

  /** Rows of a 2-D tensor by index (SafetensorsFile.readRowsRaw). */
  readRowsRaw(name: string, rows: Int32Array): RawTensor {
    if (this.decoded?.has(name)) return this.decoded.readRowsRaw(name, rows);
    const v = this.views.get(name);
    return v ? v.file.readRowsRawOf(v.info, rows) : this.file(name).readRowsRaw(name, rows);
  }

  /** A tensor's bytes in pieces of at most `chunkBytes` (SafetensorsFile.rawChunks). */
  rawChunks(name: string, chunkBytes: number): Generator<Uint8Array> {
    if (this.decoded?.has(name)) return this.decoded.rawChunks(name, chunkBytes);
    const v = this.views.get(name);
    return v ? v.file.rawChunksOf(v.info, chunkBytes) : this.file(name).rawChunks(name, chunkBytes);
  }

  /** A tensor as stored, to be decoded elsewhere (a worker thread: storedToF32): its bytes, or an FP8 weight's codes and block scales. */
  readStored(name: string): StoredTensor {
    return this.decoded?.has(name) ? this.decoded.stored(name) : { raw: this.rawRead(name) };
  }

  /**
   * A floating tensor in float32 (an FP8 block weight: its exact dequantized values, not rounded to
   * the torch_dtype), into `into` where rawToF32 can, else a new array.
   */
  readF32(name: string, into?: Float32Array): Tensor {
    if (this.decoded?.has(name)) return this.decoded.readF32(name, into);
    // the stored bytes are read into reused scratch memory, then converted
    const info = this.rawInfo(name);
    const buf = takeBuffer(info.end - info.begin);
    try {
      return rawToF32(this.rawRead(name, new Uint8Array(buf, 0, info.end - info.begin)), `${this.dir}: tensor "${name}"`, into);
    } finally {
      giveBuffer(buf);
    }
  }

  /** Where `name`'s bytes lie in its file (an FP8 block weight's codes, with its scales), or null for a weight decoded otherwise. */
  locate(name: string): StoredLocation | null {
    if (this.decoded?.has(name)) return this.decoded.locate?.(name) ?? null;
    return this.rawLocate(name);
  }

  private rawLocate(name: string): StoredLocation {
    const v = this.views.get(name);
    const f = v?.file ?? this.file(name);
    return f.locationOf(v?.info ?? f.info(name));
  }

  /** Name of the file holding `name`, relative to the folder. */
  fileOf(name: string): string {
    return path.relative(this.dir, (this.views.get(name)?.file ?? this.file(name)).file);
  }
}

/** The raw tensors of a checkpoint, before any weight is presented decoded. */
export interface RawAccess {
  readonly dir: string;
  names(): string[];
  info(name: string): TensorInfo;
  readRaw(name: string): RawTensor;
  /** where the stored bytes lie (null: where a reader on another thread cannot open them) */
  locate?(name: string): StoredLocation | null;
}

/**
 * Weights a checkpoint presents decoded (FP8 blocks, compressed-tensors): which names it presents
 * (companion tensors such as scales left out, decoded weights in) and how each decoded weight
 * reads: float32 exactly, or as bytes of the model's dtype.
 */
export interface DecodedWeights {
  names(stored: readonly string[]): string[];
  /** `name` is a decoded weight */
  has(name: string): boolean;
  /** `name` is a companion tensor, not presented */
  hides(name: string): boolean;
  info(name: string): TensorInfo;
  /** float32 values, into `into` where the presenter can */
  readF32(name: string, into?: Float32Array): Tensor;
  readRaw(name: string): RawTensor;
  rawChunks(name: string, chunkBytes: number): Generator<Uint8Array>;
  readRowsRaw(name: string, rows: Int32Array): RawTensor;
  /** the weight as stored, for decoding on another thread (storedToF32) */
  stored(name: string): StoredTensor;
  /** where the weight lies, for a reader on another thread (Checkpoint.locate), where the presenter's form allows */
  locate?(name: string): StoredLocation | null;
}

/** A tensor as a checkpoint stores it (Checkpoint.readStored). */
export type StoredTensor = { raw: RawTensor } | { fp8: Fp8Stored };

/** A stored tensor in float32, as Checkpoint.readF32 reads it, into `into` where it can (its size; check the result); `where` names it in errors. */
export function storedToF32(t: StoredTensor, where: string, into?: Float32Array): Float32Array {
  if (!("fp8" in t)) return rawToF32(t.raw, where, into).data;
  return fp8BlockRows(t.fp8, 0, t.fp8.out, into);
}

function readIndex(file: string, shown: string): Record<string, string> {
  const json = readJsonObject(file, LIMITS.maxIndexJsonBytes);
  const wm = json.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm) || !Object.values(wm).every((v) => typeof v === "string")) {
    throw new CheckpointFormatError(`${shown}: "weight_map" must map tensor names to shard file names`);
  }
  const bad = Object.keys(wm).find((n) => !isPlainTensorName(n));
  if (bad !== undefined) throw new CheckpointFormatError(`${shown}: ${JSON.stringify(bad.slice(0, 80))} is not a plain tensor name`);
  return wm as Record<string, string>;
}

import path from "node:path";
import { CheckpointFormatError, asFormatError } from "../errors.js";
import { confinedFile, entryExists } from "./files.js";
import { readJsonObject } from "./json.js";
import type { Tensor } from "../engine/tensor.js";
import { type Fp8BlockFormat, Fp8BlockWeights } from "./fp8-blocks.js";
import { LIMITS, type RawTensor, SafetensorsFile, type TensorInfo, isPlainTensorName } from "./safetensors.js";

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
  /** FP8 block-scaled weights presented dequantized (null: every tensor as stored) */
  private fp8: Fp8BlockWeights | null = null;

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
   * Present FP8 block-scaled weights as plain ones (every weight and scale checked now): float32
   * when read as float32, `format.dtype` when read as bytes; their `weight_scale_inv` tensors hidden.
   */
  presentFp8Blocks(format: Fp8BlockFormat): void {
    const raw = { dir: this.dir, names: () => [...this.where.keys()], info: (n: string) => this.file(n).info(n) };
    this.fp8 = new Fp8BlockWeights({ ...raw, readRaw: (n) => this.file(n).readRaw(n) }, format);
  }

  names(): string[] {
    const fp8 = this.fp8;
    const all = [...this.where.keys()];
    return fp8 ? all.filter((n) => !fp8.isScale(n)) : all;
  }

  has(name: string): boolean {
    return this.where.has(name) && !this.fp8?.isScale(name);
  }

  private file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new CheckpointFormatError(`${this.dir}: checkpoint has no tensor "${name}"`);
    return f;
  }

  info(name: string): TensorInfo {
    return this.fp8?.has(name) ? this.fp8.info(name) : this.file(name).info(name);
  }

  readRaw(name: string): RawTensor {
    return this.fp8?.has(name) ? this.fp8.readRaw(name) : this.file(name).readRaw(name);
  }

  /** Rows of a 2-D tensor by index (SafetensorsFile.readRowsRaw). */
  readRowsRaw(name: string, rows: Int32Array): RawTensor {
    return this.fp8?.has(name) ? this.fp8.readRowsRaw(name, rows) : this.file(name).readRowsRaw(name, rows);
  }

  /** A tensor's bytes in pieces of at most `chunkBytes` (SafetensorsFile.rawChunks). */
  rawChunks(name: string, chunkBytes: number): Generator<Uint8Array> {
    return this.fp8?.has(name) ? this.fp8.rawChunks(name, chunkBytes) : this.file(name).rawChunks(name, chunkBytes);
  }

  /** A floating tensor in float32 (an FP8 block weight: its exact dequantized values, not rounded to the torch_dtype). */
  readF32(name: string): Tensor {
    return this.fp8?.has(name) ? this.fp8.readF32(name) : this.file(name).readF32(name);
  }

  /** Name of the file holding `name`, relative to the folder. */
  fileOf(name: string): string {
    return path.relative(this.dir, this.file(name).file);
  }
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

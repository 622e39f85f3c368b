import fs from "node:fs";
import path from "node:path";
import { CheckpointFormatError } from "../errors.js";
import { Tensor } from "../engine/tensor.js";
import { LIMITS, RawTensor, SafetensorsFile, TensorInfo } from "./safetensors.js";

export const INDEX_FILE = "model.safetensors.index.json";
export const SINGLE_FILE = "model.safetensors";

/**
 * The weights of a checkpoint folder: one `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`. Shard headers are parsed when the folder is opened;
 * tensor data is read on demand.
 */
export class Checkpoint {
  readonly dir: string;
  private readonly files = new Map<string, SafetensorsFile>();
  private readonly where = new Map<string, SafetensorsFile>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  static open(dir: string): Checkpoint {
    const ck = new Checkpoint(dir);
    const indexPath = path.join(dir, INDEX_FILE);
    if (fs.existsSync(indexPath)) {
      const map = readIndex(indexPath);
      for (const [name, shard] of Object.entries(map)) {
        let f = ck.files.get(shard);
        if (!f) {
          const shardPath = path.join(dir, shard);
          if (path.basename(shard) !== shard) throw new CheckpointFormatError(`${indexPath}: shard name "${shard}" must be a plain file name`);
          if (!fs.existsSync(shardPath)) {
            throw new CheckpointFormatError(`${indexPath}: shard "${shard}" (holding "${name}") does not exist`);
          }
          f = SafetensorsFile.open(shardPath);
          ck.files.set(shard, f);
        }
        if (!f.tensors.has(name)) {
          throw new CheckpointFormatError(`${indexPath}: tensor "${name}" is mapped to "${shard}" but that shard does not hold it`);
        }
        ck.where.set(name, f);
      }
      return ck;
    }
    const single = path.join(dir, SINGLE_FILE);
    if (!fs.existsSync(single)) {
      throw new CheckpointFormatError(`${dir}: neither ${INDEX_FILE} nor ${SINGLE_FILE} found`);
    }
    const f = SafetensorsFile.open(single);
    ck.files.set(SINGLE_FILE, f);
    for (const name of f.tensors.keys()) ck.where.set(name, f);
    return ck;
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  private file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new CheckpointFormatError(`${this.dir}: checkpoint has no tensor "${name}"`);
    return f;
  }

  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }

  readRaw(name: string): RawTensor {
    return this.file(name).readRaw(name);
  }

  readF32(name: string): Tensor {
    return this.file(name).readF32(name);
  }

  /** Name of the file holding `name`, relative to the folder. */
  fileOf(name: string): string {
    return path.relative(this.dir, this.file(name).file);
  }
}

function readIndex(indexPath: string): Record<string, string> {
  const size = fs.statSync(indexPath).size;
  if (size > LIMITS.maxIndexJsonBytes) {
    throw new CheckpointFormatError(`${indexPath}: ${size} bytes exceeds the limit of ${LIMITS.maxIndexJsonBytes}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(indexPath, "utf8"));
  } catch (cause) {
    throw new CheckpointFormatError(`${indexPath}: not valid JSON (${(cause as Error).message})`, { cause });
  }
  const wm = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== "object" || wm === null || !Object.values(wm).every((v) => typeof v === "string")) {
    throw new CheckpointFormatError(`${indexPath}: "weight_map" must map tensor names to shard file names`);
  }
  return wm as Record<string, string>;
}

import fs from "node:fs";
import path from "node:path";
import { CheckpointFormatError } from "../errors.js";
import { Tensor, numel } from "../engine/tensor.js";
import { bf16ToF32, f16ToF32, fp8e4m3ToF32 } from "../engine/dtype.js";

/** Limits on what is read from disk before trusting it. */
export const LIMITS = {
  /** safetensors' own limit on the JSON header. */
  maxHeaderBytes: 100 * 1024 * 1024,
  maxRank: 8,
  /** largest single tensor we will allocate (elements). */
  maxTensorElements: 2 ** 31 - 1,
  maxIndexJsonBytes: 64 * 1024 * 1024,
} as const;

export type DType = "F64" | "F32" | "F16" | "BF16" | "F8_E4M3" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

export const DTYPE_BYTES: Record<DType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export function isDType(s: unknown): s is DType {
  return typeof s === "string" && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** byte offsets relative to the start of the data section */
  begin: number;
  end: number;
}

export interface RawTensor {
  dtype: DType;
  shape: number[];
  bytes: Uint8Array;
}

function parseEntry(file: string, name: string, v: unknown, dataSize: number): TensorInfo {
  const where = `${file}: tensor "${name}"`;
  if (typeof v !== "object" || v === null) throw new CheckpointFormatError(`${where}: header entry is not an object`);
  const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (!isDType(e.dtype)) throw new CheckpointFormatError(`${where}: unknown dtype ${JSON.stringify(e.dtype)}`);
  if (!Array.isArray(e.shape) || e.shape.length > LIMITS.maxRank || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CheckpointFormatError(`${where}: invalid shape ${JSON.stringify(e.shape)}`);
  }
  const shape = e.shape as number[];
  const off = e.data_offsets;
  if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CheckpointFormatError(`${where}: invalid data_offsets ${JSON.stringify(off)}`);
  }
  const [begin, end] = off as [number, number];
  if (begin > end || end > dataSize) {
    throw new CheckpointFormatError(`${where}: data_offsets [${begin}, ${end}] outside the data section of ${dataSize} bytes`);
  }
  const n = numel(shape);
  if (n > LIMITS.maxTensorElements) throw new CheckpointFormatError(`${where}: ${n} elements exceed the limit of ${LIMITS.maxTensorElements}`);
  const expected = n * DTYPE_BYTES[e.dtype];
  if (end - begin !== expected) {
    throw new CheckpointFormatError(`${where}: ${end - begin} bytes but shape [${shape.join(", ")}] of ${e.dtype} needs ${expected}`);
  }
  return { name, dtype: e.dtype, shape, begin, end };
}

/**
 * One safetensors file. The header is parsed and validated once; tensors are read from disk
 * one at a time, on demand.
 */
export class SafetensorsFile {
  readonly file: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  private readonly dataStart: number;

  private constructor(file: string, tensors: Map<string, TensorInfo>, metadata: Record<string, string>, dataStart: number) {
    this.file = file;
    this.tensors = tensors;
    this.metadata = metadata;
    this.dataStart = dataStart;
  }

  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, "r");
    } catch (cause) {
      throw new CheckpointFormatError(`${file}: cannot open (${(cause as Error).message})`, { cause });
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) throw new CheckpointFormatError(`${file}: ${size} bytes is too short for a safetensors header`);
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const headerLen = lenBuf.readBigUInt64LE(0);
      if (headerLen > BigInt(LIMITS.maxHeaderBytes)) {
        throw new CheckpointFormatError(`${file}: header length ${headerLen} exceeds the limit of ${LIMITS.maxHeaderBytes} bytes`);
      }
      if (headerLen > BigInt(size - 8)) {
        throw new CheckpointFormatError(`${file}: header length ${headerLen} is beyond the end of the ${size}-byte file`);
      }
      const hl = Number(headerLen);
      const hbuf = Buffer.alloc(hl);
      fs.readSync(fd, hbuf, 0, hl, 8);
      let header: unknown;
      try {
        header = JSON.parse(hbuf.toString("utf8"));
      } catch (cause) {
        throw new CheckpointFormatError(`${file}: header is not valid JSON (${(cause as Error).message})`, { cause });
      }
      if (typeof header !== "object" || header === null || Array.isArray(header)) {
        throw new CheckpointFormatError(`${file}: header is not a JSON object`);
      }
      const dataStart = 8 + hl;
      const dataSize = size - dataStart;
      const tensors = new Map<string, TensorInfo>();
      let metadata: Record<string, string> = {};
      for (const [name, v] of Object.entries(header)) {
        if (name === "__metadata__") {
          if (typeof v !== "object" || v === null || !Object.values(v).every((x) => typeof x === "string")) {
            throw new CheckpointFormatError(`${file}: __metadata__ must map strings to strings`);
          }
          metadata = v as Record<string, string>;
          continue;
        }
        tensors.set(name, parseEntry(file, name, v, dataSize));
      }
      const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
      for (let i = 1; i < sorted.length; i++) {
        const prev = sorted[i - 1] as TensorInfo;
        const cur = sorted[i] as TensorInfo;
        if (cur.begin < prev.end) {
          throw new CheckpointFormatError(`${file}: tensor "${cur.name}" overlaps tensor "${prev.name}" in the data section`);
        }
      }
      return new SafetensorsFile(file, tensors, metadata, dataStart);
    } finally {
      fs.closeSync(fd);
    }
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new CheckpointFormatError(`${this.file}: no tensor named "${name}"`);
    return t;
  }

  /** The tensor's bytes, read from disk now. */
  readRaw(name: string): RawTensor {
    const t = this.info(name);
    const bytes = new Uint8Array(t.end - t.begin);
    const fd = fs.openSync(this.file, "r");
    try {
      let done = 0;
      while (done < bytes.length) {
        const n = fs.readSync(fd, bytes, done, bytes.length - done, this.dataStart + t.begin + done);
        if (n === 0) throw new CheckpointFormatError(`${this.file}: tensor "${name}": file ends inside its data`);
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    return { dtype: t.dtype, shape: t.shape, bytes };
  }

  /** A floating tensor read and converted to float32. */
  readF32(name: string): Tensor {
    return rawToF32(this.readRaw(name), `${this.file}: tensor "${name}"`);
  }
}

/** Aligned typed-array view over raw little-endian bytes (copies when unaligned). */
function view<T>(bytes: Uint8Array, width: number, ctor: new (b: ArrayBuffer, o: number, n: number) => T): T {
  const aligned = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  return new ctor(aligned.buffer as ArrayBuffer, aligned.byteOffset, aligned.byteLength / width);
}

export function rawToF32(raw: RawTensor, where: string): Tensor {
  const b = raw.bytes;
  let data: Float32Array;
  switch (raw.dtype) {
    case "F32":
      data = new Float32Array(view(b, 4, Float32Array));
      break;
    case "BF16":
      data = bf16ToF32(view(b, 2, Uint16Array));
      break;
    case "F16":
      data = f16ToF32(view(b, 2, Uint16Array));
      break;
    case "F64":
      data = Float32Array.from(view(b, 8, Float64Array));
      break;
    case "F8_E4M3":
      data = Float32Array.from(b, (x) => fp8e4m3ToF32(x));
      break;
    default:
      throw new CheckpointFormatError(`${where}: dtype ${raw.dtype} is not a floating type`);
  }
  return new Tensor(data, raw.shape);
}

/** Integer tensor values as numbers (I64 must fit in a safe integer). */
export function rawToInts(raw: RawTensor, where: string): number[] {
  const b = raw.bytes;
  switch (raw.dtype) {
    case "I64":
      return Array.from(view(b, 8, BigInt64Array), (x) => {
        if (x > BigInt(Number.MAX_SAFE_INTEGER) || x < BigInt(Number.MIN_SAFE_INTEGER)) {
          throw new CheckpointFormatError(`${where}: value ${x} does not fit a safe integer`);
        }
        return Number(x);
      });
    case "I32":
      return Array.from(view(b, 4, Int32Array));
    case "I16":
      return Array.from(view(b, 2, Int16Array));
    case "I8":
      return Array.from(new Int8Array(b.buffer, b.byteOffset, b.byteLength));
    case "U8":
    case "BOOL":
      return Array.from(b);
    default:
      throw new CheckpointFormatError(`${where}: dtype ${raw.dtype} is not an integer type`);
  }
}

export function basenameOf(file: string): string {
  return path.basename(file);
}

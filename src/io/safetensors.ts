import fs from "node:fs";
import { giveBuffer, takeBuffer } from "../engine/scratch.js";
import { CheckpointFormatError, InternalError, asFormatError } from "../errors.js";
import { openRegular, readAt } from "./files.js";
import { Tensor, numel } from "../engine/tensor.js";
import { bf16ToF32Checked, f16ToF32, fp8e4m3ToF32 } from "../engine/dtype.js";

/** Limits on what is read from disk before trusting it. */
export const LIMITS = {
  /** safetensors' own limit on the JSON header. */
  maxHeaderBytes: 100 * 1024 * 1024,
  maxRank: 8,
  /** largest single tensor we will allocate (elements). */
  maxTensorElements: 2 ** 31 - 1,
  maxIndexJsonBytes: 64 * 1024 * 1024,
  /** a shard's `__metadata__` (entries, and bytes of keys and values together) */
  maxMetadataEntries: 1024,
  maxMetadataBytes: 1024 * 1024,
  /** largest safetensors file opened (header and data) */
  maxFileBytes: 2 ** 50,
} as const;

/**
 * A plain tensor name: dot-separated parts of letters, digits, `_` and `-`, none of them a name
 * that JavaScript objects treat specially (`__proto__`, `constructor`, `prototype`).
 */
export function isPlainTensorName(name: string): boolean {
  return (
    name.length <= 1024 &&
    name.split(".").every((p) => /^[A-Za-z0-9_-]+$/.test(p) && p !== "__proto__" && p !== "constructor" && p !== "prototype")
  );
}

/**
 * The keys of the top-level JSON object in `text`, in order, duplicates included (JSON.parse keeps
 * only the last of equal keys, which would hide a tensor). `text` must be valid JSON.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(text.slice(i, j + 1)) as string);
      expectKey = false;
      i = j;
    } else if (c === "{" || c === "[") {
      depth++;
      expectKey = c === "{" && depth === 1;
    } else if (c === "}" || c === "]") depth--;
    else if (c === "," && depth === 1) expectKey = true;
  }
  return keys;
}

export type DType = "F64" | "F32" | "F16" | "BF16" | "F8_E4M3" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

export const DTYPE_BYTES: Record<DType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

function isDType(s: unknown): s is DType {
  return typeof s === "string" && Object.hasOwn(DTYPE_BYTES, s);
}

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** byte offsets relative to the start of the data section */
  begin: number;
  end: number;
}

/** A stored tensor's place on disk: its file, the position of its bytes, their type and shape. */
export interface StoredLocation {
  file: string;
  position: number;
  dtype: DType;
  shape: number[];
  /** F8_E4M3 codes of a weight stored in FP8 blocks (fp8-blocks.ts): its float32 scale per block of `size` (rows, columns) */
  blocks?: { scaleInv: Float32Array; size: readonly [number, number] };
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
  if (n > LIMITS.maxTensorElements)
    throw new CheckpointFormatError(`${where}: ${n} elements exceed the limit of ${LIMITS.maxTensorElements}`);
  const expected = n * DTYPE_BYTES[e.dtype];
  if (end - begin !== expected) {
    throw new CheckpointFormatError(`${where}: ${end - begin} bytes but shape [${shape.join(", ")}] of ${e.dtype} needs ${expected}`);
  }
  return { name, dtype: e.dtype, shape, begin, end };
}

function parseMetadata(file: string, v: unknown): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v) || !Object.values(v).every((x) => typeof x === "string")) {
    throw new CheckpointFormatError(`${file}: __metadata__ must map strings to strings`);
  }
  const entries = Object.entries(v as Record<string, string>);
  const bytes = entries.reduce((a, [k, x]) => a + k.length + x.length, 0);
  if (entries.length > LIMITS.maxMetadataEntries || bytes > LIMITS.maxMetadataBytes) {
    throw new CheckpointFormatError(
      `${file}: __metadata__ has ${entries.length} entries of ${bytes} characters, over the limit of ${LIMITS.maxMetadataEntries} entries or ${LIMITS.maxMetadataBytes} characters`,
    );
  }
  return Object.fromEntries(entries);
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
    const { fd, size } = openRegular(file, LIMITS.maxFileBytes, asFormatError, "safetensors file");
    try {
      if (size < 8) throw new CheckpointFormatError(`${file}: ${size} bytes is too short for a safetensors header`);
      const lenBuf = Buffer.alloc(8);
      readAt(fd, file, lenBuf, 0, asFormatError);
      const headerLen = lenBuf.readBigUInt64LE(0);
      if (headerLen > BigInt(LIMITS.maxHeaderBytes)) {
        throw new CheckpointFormatError(`${file}: header length ${headerLen} exceeds the limit of ${LIMITS.maxHeaderBytes} bytes`);
      }
      if (headerLen > BigInt(size - 8)) {
        throw new CheckpointFormatError(`${file}: header length ${headerLen} is beyond the end of the ${size}-byte file`);
      }
      const hl = Number(headerLen);
      const hbuf = Buffer.alloc(hl);
      readAt(fd, file, hbuf, 8, asFormatError);
      const text = hbuf.toString("utf8");
      let header: unknown;
      try {
        header = JSON.parse(text);
      } catch (cause) {
        throw new CheckpointFormatError(`${file}: header is not valid JSON (${(cause as Error).message})`, { cause });
      }
      if (typeof header !== "object" || header === null || Array.isArray(header)) {
        throw new CheckpointFormatError(`${file}: header is not a JSON object`);
      }
      const keys = topLevelKeys(text);
      const dup = keys.find((k, i) => keys.indexOf(k) !== i);
      if (dup !== undefined) throw new CheckpointFormatError(`${file}: header names tensor ${JSON.stringify(dup)} twice`);
      const dataStart = 8 + hl;
      const dataSize = size - dataStart;
      const tensors = new Map<string, TensorInfo>();
      let metadata: Record<string, string> = {};
      for (const [name, v] of Object.entries(header)) {
        if (name === "__metadata__") {
          metadata = parseMetadata(file, v);
          continue;
        }
        if (!isPlainTensorName(name))
          throw new CheckpointFormatError(
            `${file}: ${JSON.stringify(name.slice(0, 80))} is not a plain tensor name (dot-separated letters, digits, _ and -)`,
          );
        tensors.set(name, parseEntry(file, name, v, dataSize));
      }
      const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
      let covered = 0;
      for (const t of sorted) {
        if (t.begin < covered) {
          const prev = sorted.find((p) => p.end > t.begin && p !== t) as TensorInfo;
          throw new CheckpointFormatError(`${file}: tensor "${t.name}" overlaps tensor "${prev.name}" in the data section`);
        }
        if (t.begin > covered)
          throw new CheckpointFormatError(`${file}: data bytes [${covered}, ${t.begin}) are not covered by any tensor in the header`);
        covered = t.end;
      }
      if (covered !== dataSize)
        throw new CheckpointFormatError(`${file}: data bytes [${covered}, ${dataSize}) are not covered by any tensor in the header`);
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

  /** Where the bytes `t` describes lie: this file and their position in it (a reader on another thread opens it itself). */
  locationOf(t: TensorInfo): StoredLocation {
    return { file: this.file, position: this.dataStart + t.begin, dtype: t.dtype, shape: t.shape };
  }

  /** The tensor's bytes, read from disk now (a shard that vanished or shrank since it was opened is named). */
  readRaw(name: string): RawTensor {
    return this.readRawOf(this.info(name));
  }

  /** The bytes `t` describes (a tensor of this file's header, or a view of part of one), into `into` when given (exactly as many bytes). */
  readRawOf(t: TensorInfo, into?: Uint8Array): RawTensor {
    if (into && into.length !== t.end - t.begin)
      throw new InternalError(`readRawOf: ${into.length} bytes given, ${t.end - t.begin} needed`);
    const bytes = into ?? new Uint8Array(t.end - t.begin);
    const { fd } = openRegular(this.file, LIMITS.maxFileBytes, asFormatError, "safetensors file");
    try {
      readAt(fd, this.file, bytes, this.dataStart + t.begin, asFormatError);
    } finally {
      fs.closeSync(fd);
    }
    return { dtype: t.dtype, shape: t.shape, bytes };
  }

  /**
   * A tensor's bytes in pieces of at most `chunkBytes` (whole elements), read into one reused
   * buffer: each piece is valid until the next is read. For scans and copies of tensors of any
   * size in bounded memory.
   */
  rawChunks(name: string, chunkBytes: number): Generator<Uint8Array> {
    return this.rawChunksOf(this.info(name), chunkBytes);
  }

  /** rawChunks of the bytes `t` describes. */
  *rawChunksOf(t: TensorInfo, chunkBytes: number): Generator<Uint8Array> {
    const size = DTYPE_BYTES[t.dtype];
    const total = t.end - t.begin;
    const step = Math.max(size, Math.floor(chunkBytes / size) * size);
    const len = Math.min(step, Math.max(total, 1));
    const buf = new Uint8Array(takeBuffer(len), 0, len);
    const { fd } = openRegular(this.file, LIMITS.maxFileBytes, asFormatError, "safetensors file");
    try {
      for (let pos = 0; pos < total; pos += step) {
        const piece = buf.subarray(0, Math.min(step, total - pos));
        readAt(fd, this.file, piece, this.dataStart + t.begin + pos, asFormatError);
        yield piece;
      }
    } finally {
      fs.closeSync(fd);
      giveBuffer(buf.buffer);
    }
  }

  /** Rows of a 2-D tensor (an embedding table), by index, as a raw [rows.length, columns] tensor: only those bytes are read. */
  readRowsRaw(name: string, rows: Int32Array): RawTensor {
    return this.readRowsRawOf(this.info(name), rows);
  }

  /** readRowsRaw of the bytes `t` describes. */
  readRowsRawOf(t: TensorInfo, rows: Int32Array): RawTensor {
    const name = t.name;
    if (t.shape.length !== 2) throw new CheckpointFormatError(`${this.file}: tensor "${name}" is not 2-D; rows cannot be read from it`);
    const [n, cols] = t.shape as [number, number];
    const rowBytes = cols * DTYPE_BYTES[t.dtype];
    const bytes = new Uint8Array(rows.length * rowBytes);
    const { fd } = openRegular(this.file, LIMITS.maxFileBytes, asFormatError, "safetensors file");
    try {
      rows.forEach((r, i) => {
        if (!(r >= 0 && r < n)) throw new InternalError(`row ${r} is outside tensor "${name}" of ${n} rows`);
        readAt(fd, this.file, bytes.subarray(i * rowBytes, (i + 1) * rowBytes), this.dataStart + t.begin + r * rowBytes, asFormatError);
      });
    } finally {
      fs.closeSync(fd);
    }
    return { dtype: t.dtype, shape: [rows.length, cols], bytes };
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

/** Arrays rawToF32 made from bf16 values it found finite while converting them, until asked (convertedFinite). */
const convertedFiniteArrays = new WeakSet<Float32Array>();

/**
 * Whether `values` came from rawToF32 and were found finite there (a load then need not look
 * again). Answers once: an array may be written after it is loaded, so a later check reads it.
 */
export function convertedFinite(values: Float32Array): boolean {
  return convertedFiniteArrays.delete(values);
}

/**
 * A floating tensor's raw values in float32. BF16 and F32 values go into `into` when it is given and
 * has their number of values (memory written before costs no page faults); other dtypes, and an
 * `into` of another size, into a new array.
 */
export function rawToF32(raw: RawTensor, where: string, into?: Float32Array): Tensor {
  const b = raw.bytes;
  const n = numel(raw.shape);
  const out = into?.length === n ? into : undefined;
  let data: Float32Array;
  switch (raw.dtype) {
    case "F32": {
      const v = view(b, 4, Float32Array);
      out?.set(v);
      data = out ?? new Float32Array(v);
      break;
    }
    case "BF16": {
      const c = bf16ToF32Checked(view(b, 2, Uint16Array), out);
      data = c.data;
      if (c.finite) convertedFiniteArrays.add(data);
      else convertedFiniteArrays.delete(data);
      break;
    }
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

/** Flat index of the first NaN or infinity in float32 values (-1 if none): `firstNonFinite` on their bytes. */
export function firstNonFiniteF32(values: Float32Array): number {
  return firstNonFinite({
    dtype: "F32",
    shape: [values.length],
    bytes: new Uint8Array(values.buffer, values.byteOffset, values.byteLength),
  });
}

/** firstNonFinite over a tensor given in pieces (rawChunks): the flat index of the first NaN or infinity, or -1. */
export function firstNonFiniteIn(dtype: DType, pieces: Iterable<Uint8Array>): number {
  const size = DTYPE_BYTES[dtype];
  let before = 0;
  for (const bytes of pieces) {
    const i = firstNonFinite({ dtype, shape: [bytes.byteLength / size], bytes });
    if (i >= 0) return before + i;
    before += bytes.byteLength / size;
  }
  return -1;
}

/** Flat index of the first NaN or infinity in a floating tensor's raw bytes (-1 if none, or not floating). */
export function firstNonFinite(raw: RawTensor): number {
  const b = raw.bytes;
  switch (raw.dtype) {
    case "F32": {
      const v = view(b, 4, Uint32Array);
      for (let i = 0; i < v.length; i++) if (((v[i] as number) & 0x7f800000) === 0x7f800000) return i;
      return -1;
    }
    case "BF16":
    case "F16": {
      const v = view(b, 2, Uint16Array);
      const exp = raw.dtype === "BF16" ? 0x7f80 : 0x7c00;
      for (let i = 0; i < v.length; i++) if (((v[i] as number) & exp) === exp) return i;
      return -1;
    }
    case "F64": {
      const v = view(b, 8, Float64Array);
      for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i] as number)) return i;
      return -1;
    }
    case "F8_E4M3":
      // e4m3fn has no infinity; 0x7f and 0xff are NaN
      for (let i = 0; i < b.length; i++) if (((b[i] as number) & 0x7f) === 0x7f) return i;
      return -1;
    default:
      return -1;
  }
}

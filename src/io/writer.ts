import fs from "node:fs";
import { giveBuffer, takeBuffer } from "../engine/scratch.js";
import path from "node:path";
import { IoError, InternalError, NumericalError } from "../errors.js";
import { DTYPE_BYTES, type RawTensor, firstNonFinite } from "./safetensors.js";
import { INDEX_FILE } from "./checkpoint.js";
import { numel } from "../engine/tensor.js";

export interface NamedRaw extends RawTensor {
  name: string;
}

/** A tensor whose bytes are read only when they are written (a layer assembled from files, one tensor in memory at a time). */
export interface LazyRaw extends Omit<RawTensor, "bytes"> {
  name: string;
  read(): Uint8Array;
}

/**
 * A safetensors header for tensors laid out in this order: the 8-byte little-endian length, then the
 * JSON (padded with spaces to 8 bytes), each tensor's data offsets from its dtype and shape.
 */
export function safetensorsHeader(
  tensors: readonly Pick<NamedRaw, "name" | "dtype" | "shape">[],
  metadata?: Record<string, string>,
): [Buffer, Buffer] {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const n = numel(t.shape) * DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return [len, Buffer.from(json, "utf8")];
}

function checkBytes(t: Pick<NamedRaw, "name" | "dtype" | "shape">, bytes: Uint8Array): void {
  const expected = numel(t.shape) * DTYPE_BYTES[t.dtype];
  if (bytes.byteLength !== expected)
    throw new InternalError(`tensor "${t.name}": ${bytes.byteLength} bytes, but [${t.shape.join(", ")}] ${t.dtype} needs ${expected}`);
}

/** `encodeSafetensors` for tensors in memory or read when their turn comes: the header, then each tensor's bytes. */
export function* encodeSafetensorsLazy(tensors: readonly (NamedRaw | LazyRaw)[]): Generator<Uint8Array> {
  yield* safetensorsHeader(tensors);
  for (const t of tensors) {
    const bytes = "bytes" in t ? t.bytes : t.read();
    checkBytes(t, bytes);
    yield bytes;
  }
}

/** Serialise tensors into one safetensors buffer (header padded to 8 bytes). */
export function encodeSafetensors(tensors: NamedRaw[], metadata?: Record<string, string>): Buffer[] {
  for (const t of tensors) checkBytes(t, t.bytes);
  return [
    ...safetensorsHeader(tensors, metadata),
    ...tensors.map((t) => Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength)),
  ];
}

export function writeSafetensors(file: string, tensors: NamedRaw[], metadata?: Record<string, string>): void {
  const parts = encodeSafetensors(tensors, metadata);
  const fd = fs.openSync(file, "w");
  try {
    for (const p of parts) writeAll(fd, p, file);
  } finally {
    fs.closeSync(fd);
  }
}

/** The bytes of a typed array (a view, no copy). */
export const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Write all of `buf` at the file's position, or at `position` (a write may take part of it); a failure names `file`. */
export function writeAll(fd: number, buf: Uint8Array, file: string, position?: number): void {
  let done = 0;
  try {
    while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, position === undefined ? null : position + done);
  } catch (cause) {
    throw new IoError(`${file}: write failed (${(cause as Error).message})`, { cause });
  }
}

/** Create `file` afresh for writing: whatever is in its place (a stale temporary, a planted link) is unlinked, never followed. */
function createFresh(file: string): number {
  fs.rmSync(file, { force: true });
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  try {
    return fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
  } catch (cause) {
    throw new IoError(`${file}: cannot create (${(cause as Error).message})`, { cause });
  }
}

/** A finished shard: `shard-K.safetensors` in the writer's folder, its tensors in order, their bytes and the file's. */
export interface FinishedShard {
  file: string;
  tensors: string[];
  tensor_bytes: number;
  file_bytes: number;
}

export interface ShardedWriterOptions {
  metadata?: Record<string, string>;
  /** shards finished by an earlier run, in the folder already (a resume): writing goes on after them */
  done?: readonly FinishedShard[];
  /** called when a shard is finished, made durable (fsync) first */
  onShard?: (shard: FinishedShard, index: number) => void;
}

/** Bytes copied at a time when a shard is assembled. */
const COPY_CHUNK = 16 * 1024 * 1024;

interface PendingEntry {
  name: string;
  dtype: NamedRaw["dtype"];
  shape: number[];
  length: number;
}

/** Tensors copied or scanned unchanged go through memory in pieces of at most this many bytes. */
export const PIECE_BYTES = 16 * 1024 ** 2;

/** Largest output shard by default (as Hugging Face's save_pretrained cuts them). */
export const DEFAULT_SHARD_BYTES = 2 * 1024 ** 3;

/**
 * Writes tensors as they come into shards of at most `maxShardBytes` (a single larger tensor
 * gets its own shard), then names them model-0000i-of-0000N.safetensors and writes the index.
 * Tensor data goes to disk at once (a scratch file per shard, prefixed with the header when
 * the shard is complete), so memory does not grow with the model.
 */
export class ShardedWriter {
  private pending: PendingEntry[] = [];
  private pendingBytes = 0;
  private scratchFd: number | null = null;
  private readonly shards: FinishedShard[] = [];
  private totalBytes = 0;
  private readonly seen = new Set<string>();
  private readonly metadata: Record<string, string>;

  constructor(
    private readonly dir: string,
    private readonly maxShardBytes = DEFAULT_SHARD_BYTES,
    private readonly opts: ShardedWriterOptions = {},
  ) {
    this.metadata = opts.metadata ?? { format: "pt" };
    for (const s of opts.done ?? []) {
      this.shards.push(s);
      for (const t of s.tensors) this.seen.add(t);
      this.totalBytes += s.tensor_bytes;
    }
  }

  /** Whether tensor `name` has been written (in this run or, resumed, an earlier one). */
  has(name: string): boolean {
    return this.seen.has(name);
  }

  private get scratchPath(): string {
    return path.join(this.dir, `.shard-${this.shards.length}.data.tmp`);
  }

  add(t: NamedRaw): void {
    this.addPieces(t, [t.bytes]);
  }

  /**
   * A tensor whose bytes come in pieces (a checkpoint's rawChunks): written as they come, each
   * checked for finiteness, so a tensor of any size is copied in bounded memory.
   */
  addPieces(t: Omit<NamedRaw, "bytes">, pieces: Iterable<Uint8Array>): void {
    if (this.seen.has(t.name)) throw new InternalError(`tensor "${t.name}" written twice`);
    const size = DTYPE_BYTES[t.dtype];
    const expected = numel(t.shape) * size;
    this.seen.add(t.name);
    if (this.pendingBytes > 0 && this.pendingBytes + expected > this.maxShardBytes) this.flush();
    if (this.scratchFd === null) this.scratchFd = createFresh(this.scratchPath);
    let written = 0;
    for (const bytes of pieces) {
      const bad = firstNonFinite({ dtype: t.dtype, shape: [bytes.byteLength / size], bytes });
      if (bad >= 0)
        throw new NumericalError(
          `tensor "${t.name}" (${t.dtype} [${t.shape.join(", ")}]): non-finite value at flat index ${written / size + bad}; moecal writes only finite tensors`,
        );
      writeAll(this.scratchFd, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), this.scratchPath);
      written += bytes.byteLength;
    }
    if (written !== expected)
      throw new InternalError(`tensor "${t.name}": ${written} bytes, but [${t.shape.join(", ")}] ${t.dtype} needs ${expected}`);
    this.pending.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], length: expected });
    this.pendingBytes += expected;
    this.totalBytes += expected;
  }

  private flush(): void {
    if (this.pending.length === 0 || this.scratchFd === null) return;
    const scratch = this.scratchPath;
    fs.closeSync(this.scratchFd);
    this.scratchFd = null;
    const [len, json] = safetensorsHeader(this.pending, this.metadata);
    const index = this.shards.length;
    const tmp = path.join(this.dir, `.shard-${index}.tmp`);
    const out = createFresh(tmp);
    const inp = fs.openSync(scratch, "r");
    let release = (): void => undefined;
    try {
      writeAll(out, len, tmp);
      writeAll(out, json, tmp);
      const bufBytes = Math.min(COPY_CHUNK, Math.max(1, this.pendingBytes));
      const buf = Buffer.from(takeBuffer(bufBytes), 0, bufBytes);
      release = () => giveBuffer(buf.buffer);
      let pos = 0;
      while (pos < this.pendingBytes) {
        const n = fs.readSync(inp, buf, 0, buf.length, pos);
        if (n === 0) throw new IoError(`${scratch}: ended early while assembling the shard`);
        writeAll(out, buf.subarray(0, n), tmp);
        pos += n;
      }
      if (this.opts.onShard) fs.fsyncSync(out);
    } finally {
      release();
      fs.closeSync(inp);
      fs.closeSync(out);
    }
    fs.rmSync(scratch, { force: true });
    const file = `shard-${index}.safetensors`;
    fs.renameSync(tmp, path.join(this.dir, file));
    const shard: FinishedShard = {
      file,
      tensors: this.pending.map((t) => t.name),
      tensor_bytes: this.pendingBytes,
      file_bytes: 8 + Buffer.byteLength(json) + this.pendingBytes,
    };
    this.shards.push(shard);
    this.pending = [];
    this.pendingBytes = 0;
    this.opts.onShard?.(shard, index);
  }

  /** Finish: move the shards into `target` (this folder by default) under their final names, write the index there. Returns the shard file names. */
  finish(target = this.dir): string[] {
    this.flush();
    const n = this.shards.length;
    const pad = (i: number): string => String(i).padStart(5, "0");
    const weightMap: Record<string, string> = {};
    const files: string[] = [];
    this.shards.forEach((s, i) => {
      const name = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
      fs.renameSync(path.join(this.dir, s.file), path.join(target, name));
      files.push(name);
      for (const t of s.tensors) weightMap[t] = name;
    });
    const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    fs.writeFileSync(
      path.join(target, INDEX_FILE),
      `${JSON.stringify({ metadata: { total_size: this.totalBytes }, weight_map: sorted }, null, 2)}\n`,
    );
    return files;
  }
}

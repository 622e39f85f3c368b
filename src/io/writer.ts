import fs from "node:fs";
import path from "node:path";
import { MoecalError, UsageError } from "../errors.js";
import { DTYPE_BYTES, RawTensor } from "./safetensors.js";
import { INDEX_FILE } from "./checkpoint.js";
import { numel } from "../engine/tensor.js";

export interface NamedRaw extends RawTensor {
  name: string;
}

/** Serialise tensors into one safetensors buffer (header padded to 8 bytes). */
export function encodeSafetensors(tensors: NamedRaw[], metadata?: Record<string, string>): Buffer[] {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const expected = numel(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.bytes.byteLength !== expected) {
      throw new UsageError(`tensor "${t.name}": ${t.bytes.byteLength} bytes, but [${t.shape.join(", ")}] ${t.dtype} needs ${expected}`);
    }
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    offset += t.bytes.byteLength;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return [len, Buffer.from(json, "utf8"), ...tensors.map((t) => Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength))];
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

function writeAll(fd: number, buf: Buffer, file: string): void {
  let done = 0;
  try {
    while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done);
  } catch (cause) {
    throw new MoecalError("E_IO", `${file}: write failed (${(cause as Error).message})`, { cause });
  }
}

/**
 * Writes tensors as they come into shards of at most `maxShardBytes` (a single larger tensor
 * gets its own shard), then names them model-0000i-of-0000N.safetensors and writes the index.
 * Only one shard's tensors are held in memory at a time.
 */
export class ShardedWriter {
  private pending: NamedRaw[] = [];
  private pendingBytes = 0;
  private shards: { tmp: string; names: string[] }[] = [];
  private totalBytes = 0;
  private readonly seen = new Set<string>();

  constructor(
    private readonly dir: string,
    private readonly maxShardBytes = 2 * 1024 ** 3,
    private readonly metadata: Record<string, string> = { format: "pt" },
  ) {}

  add(t: NamedRaw): void {
    if (this.seen.has(t.name)) throw new UsageError(`tensor "${t.name}" written twice`);
    this.seen.add(t.name);
    if (this.pendingBytes > 0 && this.pendingBytes + t.bytes.byteLength > this.maxShardBytes) this.flush();
    this.pending.push(t);
    this.pendingBytes += t.bytes.byteLength;
    this.totalBytes += t.bytes.byteLength;
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    const tmp = path.join(this.dir, `.shard-${this.shards.length}.tmp`);
    writeSafetensors(tmp, this.pending, this.metadata);
    this.shards.push({ tmp, names: this.pending.map((t) => t.name) });
    this.pending = [];
    this.pendingBytes = 0;
  }

  /** Finish: rename shards, write the index. Returns the shard file names. */
  finish(): string[] {
    this.flush();
    const n = this.shards.length;
    const pad = (i: number): string => String(i).padStart(5, "0");
    const weightMap: Record<string, string> = {};
    const files: string[] = [];
    this.shards.forEach((s, i) => {
      const name = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
      fs.renameSync(s.tmp, path.join(this.dir, name));
      files.push(name);
      for (const t of s.names) weightMap[t] = name;
    });
    const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    fs.writeFileSync(path.join(this.dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: this.totalBytes }, weight_map: sorted }, null, 2) + "\n");
    return files;
  }
}

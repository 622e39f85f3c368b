import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type ErrorFactory, asFormatError } from "../errors.js";
import { WorkerPool } from "../util/worker-pool.js";
import { openRegular } from "./files.js";
import { INDEX_FILE } from "./checkpoint.js";

const CHUNK = 16 * 1024 * 1024;
/** Largest file hashed (any checkpoint shard or dataset we accept is far smaller). */
const MAX_HASHED_BYTES = 2 ** 50;

/** SHA-256 of a regular file, read in chunks. */
export function sha256File(file: string, err: ErrorFactory): string {
  const { fd, size } = openRegular(file, MAX_HASHED_BYTES, err);
  try {
    const h = createHash("sha256");
    const buf = Buffer.alloc(Math.min(CHUNK, Math.max(1, size)));
    for (let pos = 0; pos < size; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
    return h.digest("hex");
  } finally {
    fs.closeSync(fd);
  }
}

/** Checkpoints of at least this many bytes have their files hashed on worker threads, several at once. */
const PARALLEL_HASH_BYTES = 256 * 1024 ** 2;

/** A file to hash on a worker thread; a bad file is a checkpoint format error, as checkpointHash reports it. */
export const HASH_KIND = {
  what: "hash",
  script: new URL("./hash-worker.js", import.meta.url),
  run: async (file: string): Promise<string> => sha256File(file, asFormatError),
  transfer: (): ArrayBuffer[] => [],
};

/**
 * Worker threads to hash `files` of `bytes` in all: one per core and at most one per file (SHA-256
 * of one file is sequential, a checkpoint's shards are not), none below `parallelFrom` bytes.
 */
export function hashWorkers(files: number, bytes: number, parallelFrom = PARALLEL_HASH_BYTES): number {
  return bytes < parallelFrom ? 0 : Math.min(files, os.availableParallelism());
}

/**
 * A checkpoint folder's content hash: SHA-256 over the lines `<file name>\t<SHA-256 of the file>\n`
 * for config.json, the index (if any) and every weight file, in name order. It names the model
 * in moecal.json without revealing where it lay on the user's disk. A large checkpoint's files are
 * hashed on worker threads (hashWorkers; `parallelFrom`: tests); a bad file is a CheckpointFormatError.
 */
export async function checkpointHash(dir: string, weightFiles: readonly string[], parallelFrom = PARALLEL_HASH_BYTES): Promise<string> {
  const names = ["config.json", ...(fs.existsSync(path.join(dir, INDEX_FILE)) ? [INDEX_FILE] : []), ...weightFiles]
    .filter((f, i, a) => a.indexOf(f) === i)
    .sort();
  const files = names.map((f) => path.join(dir, f));
  const bytes = files.reduce((a, f) => a + (fs.statSync(f, { throwIfNoEntry: false })?.size ?? 0), 0);
  const pool = new WorkerPool(hashWorkers(files.length, bytes, parallelFrom), HASH_KIND);
  try {
    const jobs: Promise<string>[] = [];
    for (const f of files) jobs.push((await pool.submit(() => f)).result);
    const sums = await Promise.all(jobs);
    const h = createHash("sha256");
    for (const [i, f] of names.entries()) h.update(`${f}\t${sums[i]}\n`);
    return h.digest("hex");
  } finally {
    await pool.close();
  }
}

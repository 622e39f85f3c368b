import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { ErrorFactory } from "../errors.js";
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

/**
 * A checkpoint folder's content hash: SHA-256 over the lines `<file name>\t<SHA-256 of the file>\n`
 * for config.json, the index (if any) and every weight file, in name order. It names the model
 * in moecal.json without revealing where it lay on the user's disk.
 */
export function checkpointHash(dir: string, weightFiles: readonly string[], err: ErrorFactory): string {
  const names = ["config.json", ...(fs.existsSync(path.join(dir, INDEX_FILE)) ? [INDEX_FILE] : []), ...weightFiles]
    .filter((f, i, a) => a.indexOf(f) === i)
    .sort();
  const h = createHash("sha256");
  for (const f of names) h.update(`${f}\t${sha256File(path.join(dir, f), err)}\n`);
  return h.digest("hex");
}

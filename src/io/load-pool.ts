/**
 * A layer's stored weights read and converted to float32 on worker threads (BF16, F32, FP8 blocks).
 * A new float32 array costs page faults on its first write, on this project's machine more than
 * the conversion itself, and one thread converting a large MoE layer takes seconds that every core
 * can share (docs/performance.md). Each job reads one tensor's bytes from its file, opened as the
 * calling thread opens it, in pieces, into the array the job moves to the worker and back. The
 * caller makes that array (or recycles one): arrays made on a worker thread took more page faults
 * (glibc's huge pages apply to the main thread's allocations here).
 */
import fs from "node:fs";
import os from "node:os";
import { bf16ToF32Checked } from "../engine/dtype.js";
import { giveBuffer, takeBuffer } from "../engine/scratch.js";
import { numel } from "../engine/tensor.js";
import { InternalError, asFormatError } from "../errors.js";
import { WorkerPool } from "../util/worker-pool.js";
import { decodeFp8Rows } from "./fp8-blocks.js";
import { openRegular, readAt } from "./files.js";
import { LIMITS, type StoredLocation, firstNonFiniteF32 } from "./safetensors.js";

export interface LoadJob {
  at: StoredLocation;
  /** the array to fill, of the tensor's size (its whole buffer moves to the worker and back) */
  into: Float32Array;
}

export interface LoadResult {
  data: Float32Array;
  /** every value is finite */
  finite: boolean;
}

/** Whether a load job reads the tensor at `at` (BF16, F32, FP8 blocks; the others are converted by the caller, as before). */
export function loadJobReads(at: StoredLocation): boolean {
  return at.dtype === "BF16" || at.dtype === "F32" || (at.dtype === "F8_E4M3" && at.blocks !== undefined && at.shape.length === 2);
}

/** Stored bytes read at a time: what a worker holds besides the array it fills. */
const PIECE_BYTES = 16 * 1024 ** 2;

/** A loading worker's memory once it has read a full piece: the piece and its isolate (measured: docs/performance.md). */
export const LOAD_WORKER_BYTES = PIECE_BYTES + 16 * 1024 ** 2;

/** Read and convert one stored tensor (on a worker thread, or here). */
export async function runLoadJob({ at, into }: LoadJob): Promise<LoadResult> {
  const n = numel(at.shape);
  if (into.length !== n || !loadJobReads(at)) throw new InternalError(`load job: ${into.length} floats given for ${n} ${at.dtype} values`);
  const data = into;
  const { fd } = openRegular(at.file, LIMITS.maxFileBytes, asFormatError, "safetensors file");
  try {
    if (at.dtype === "F32") {
      readAt(fd, at.file, new Uint8Array(data.buffer, data.byteOffset, 4 * n), at.position, asFormatError);
      return { data, finite: firstNonFiniteF32(data) < 0 };
    }
    return { data, finite: at.blocks ? readFp8Blocks(fd, at, at.blocks, data) : readBf16(fd, at, data) };
  } finally {
    fs.closeSync(fd);
  }
}

/** `at`'s bf16 values into `data`, a piece at a time; whether all are finite. */
function readBf16(fd: number, at: StoredLocation, data: Float32Array): boolean {
  const n = data.length;
  const buf = takeBuffer(Math.min(PIECE_BYTES, 2 * n));
  let finite = true;
  try {
    const per = buf.byteLength >> 1;
    for (let i = 0; i < n; i += per) {
      const m = Math.min(per, n - i);
      readAt(fd, at.file, new Uint8Array(buf, 0, 2 * m), at.position + 2 * i, asFormatError);
      finite = bf16ToF32Checked(new Uint16Array(buf, 0, m), data.subarray(i, i + m)).finite && finite;
    }
  } finally {
    giveBuffer(buf);
  }
  return finite;
}

/** `at`'s FP8 codes decoded by their block scales into `data`, whole rows at a time; whether all are finite. */
function readFp8Blocks(fd: number, at: StoredLocation, blocks: NonNullable<StoredLocation["blocks"]>, data: Float32Array): boolean {
  const inF = at.shape[1] as number;
  const rowsPer = Math.max(1, Math.floor(PIECE_BYTES / inF));
  const buf = takeBuffer(Math.min(rowsPer * inF, data.length));
  let finite = true;
  try {
    for (let r = 0; r * inF < data.length; r += rowsPer) {
      const i = r * inF;
      const m = Math.min(rowsPer * inF, data.length - i);
      const codes = new Uint8Array(buf, 0, m);
      readAt(fd, at.file, codes, at.position + i, asFormatError);
      const piece = data.subarray(i, i + m);
      decodeFp8Rows(codes, r, blocks.scaleInv, inF, blocks.size, piece);
      finite = firstNonFiniteF32(piece) < 0 && finite;
    }
  } finally {
    giveBuffer(buf);
  }
  return finite;
}

export const LOAD_KIND = {
  what: "weight loading",
  script: new URL("./load-worker.js", import.meta.url),
  run: runLoadJob,
  transfer: (job: LoadJob): ArrayBuffer[] => [job.into.buffer as ArrayBuffer],
};

/** Worker threads for loading: one per core, at most 8 (reading and page faults stop scaling before the cores do). */
export function loadWorkers(): number {
  return Math.min(os.availableParallelism(), 8);
}

let shared: WorkerPool<LoadJob, LoadResult> | null = null;

/** The process's loading workers, started on first use and kept (an idle worker does not hold the process open). */
export function sharedLoadPool(): WorkerPool<LoadJob, LoadResult> {
  shared ??= new WorkerPool(loadWorkers(), LOAD_KIND);
  return shared;
}

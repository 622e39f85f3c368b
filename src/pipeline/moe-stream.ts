/**
 * An MoE block's calls streamed to the work folder while a layer runs one expert group at a time:
 * per call of the block, its input tokens [T, H] and the router's decisions (combine weights and
 * expert indices, [T, K]), or a routed sum [T, H] alone (K = 0). Records are read back in the order
 * they were written, so every group replays exactly the calls, and chunks, of the whole layer.
 *
 * A record: three little-endian int32 (T, H, K), then T*H float32, T*K float32, T*K int32.
 * Files are private, written to a temporary and renamed when complete (work-folder.ts).
 */
import fs from "node:fs";
import path from "node:path";
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError, asFormatError } from "../errors.js";
import { readAt } from "../io/files.js";
import type { RoutedInput } from "../nn/moe.js";
import { RESTART, openPrivate, privateWriter } from "./work-folder.js";

export interface StreamWriter {
  append(r: RoutedInput | Tensor): void;
  commit(): void;
  abandon(): void;
}

const bytesOf = (a: Float32Array | Int32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Write records to `file` (through a temporary; `commit` makes it visible; `tag`: privateWriter's). */
export function streamWriter(file: string, tag?: string): StreamWriter {
  const w = privateWriter(file, tag);
  return {
    append: (r) => {
      const flat = r instanceof Tensor ? r : r.flat;
      w.write(bytesOf(Int32Array.of(flat.dim(0), flat.dim(1), r instanceof Tensor ? 0 : r.topScores.dim(1))));
      w.write(bytesOf(flat.data));
      if (!(r instanceof Tensor)) {
        w.write(bytesOf(r.topScores.data));
        w.write(bytesOf(r.selectedExperts));
      }
    },
    commit: w.commit,
    abandon: w.abandon,
  };
}

/** `n` bytes of `file` at `pos`. */
function readBytes(fd: number, n: number, pos: number, file: string): Uint8Array {
  const buf = new Uint8Array(n);
  readAt(fd, file, buf, pos, asFormatError);
  return buf;
}

/** The records of `file`, in order: routed inputs (K > 0) or tensors [T, H] (K = 0). */
export async function* streamRecords(file: string): AsyncGenerator<RoutedInput> {
  const { fd, size } = openPrivate(file);
  try {
    let pos = 0;
    while (pos < size) {
      const head = new Int32Array(readBytes(fd, 12, pos, file).buffer);
      const [T, H, K] = [head[0] as number, head[1] as number, head[2] as number];
      if (!(T >= 0 && H > 0 && K >= 0) || pos + 12 + 4 * T * (H + 2 * K) > size)
        throw new CheckpointFormatError(`${file}: damaged record at byte ${pos}; ${RESTART}`);
      pos += 12;
      const flat = new Float32Array(readBytes(fd, 4 * T * H, pos, file).buffer);
      pos += 4 * T * H;
      const scores = new Float32Array(readBytes(fd, 4 * T * K, pos, file).buffer);
      pos += 4 * T * K;
      const selected = new Int32Array(readBytes(fd, 4 * T * K, pos, file).buffer);
      pos += 4 * T * K;
      yield { flat: new Tensor(flat, [T, H]), topScores: new Tensor(scores, [T, K]), selectedExperts: selected };
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Files of layer `i`'s expert groups in a work folder. */
export function groupFiles(dir: string, i: number) {
  return {
    /** the block's calls during calibration (original weights) */
    calibrate: path.join(dir, `moe-${i}-calibrate.bin`),
    /** the block's calls during propagation (the non-expert part quantized) */
    propagate: path.join(dir, `moe-${i}-propagate.bin`),
    /** the routed sums after `done` groups (none before the first) */
    routed: (done: number) => path.join(dir, `moe-${i}-routed-${done}.bin`),
    /** group `g`'s weighted routed outputs per propagation call (routedRows), when another process quantized it */
    rows: (g: number) => path.join(dir, `moe-${i}-rows-${g}.bin`),
    /** the tensors of group `g` */
    tensors: (g: number) => path.join(dir, `layer-${i}-group-${g}.safetensors`),
    /** what group `g` did (written after its tensors: the group's work is done when it exists) */
    result: (g: number) => path.join(dir, `layer-${i}-group-${g}.json`),
    /** the state of the layer's groups */
    state: path.join(dir, `layer-${i}-groups.json`),
  };
}

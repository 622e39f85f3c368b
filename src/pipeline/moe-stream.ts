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
import { bytesOf } from "../io/writer.js";
import { type RoutedInput, withRoutedOverride } from "../nn/moe.js";
import { withMoeCalibration } from "../calibration/context.js";
import type { DecoderLayer } from "../models/family.js";
import type { LayerSteps } from "./layer-steps.js";
import { RESTART, openPrivate, privateWriter } from "./work-folder.js";

export interface StreamWriter {
  append(r: RoutedInput | Tensor): void;
  commit(): void;
  abandon(): void;
}

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

/** The records of `file`, in order, from byte `from` (a record's start): routed inputs (K > 0) or tensors [T, H] (K = 0). */
export async function* streamRecords(file: string, from = 0): AsyncGenerator<RoutedInput> {
  const { fd, size } = openPrivate(file);
  try {
    let pos = from;
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
    /** a distributed run's token-shard jobs: the block's calls of shard `k` (calibrate: original weights; propagate: the non-expert part quantized) */
    calls: (kind: "calibrate" | "propagate", k: number) => path.join(dir, `moe-${i}-${kind}-s${k}.bin`),
    /** shard `k`'s sums of the non-expert Linears' input Gram products */
    shardStats: (k: number) => path.join(dir, `layer-${i}-shard-${k}.safetensors`),
    /** what shard `k` saw (rows, input maxima, routed tokens; written after its statistics) */
    shardResult: (k: number) => path.join(dir, `layer-${i}-shard-${k}.json`),
    /** the quantized non-expert Linears' weights (dequantized, float32), for the propagation shards */
    nonExpert: path.join(dir, `layer-${i}-non-expert.safetensors`),
  };
}

/** The files of a layer's calls of `kind`: one (a local run), or one per shard (`shards` > 0: a distributed run's token-shard jobs). */
export function callFiles(files: ReturnType<typeof groupFiles>, kind: "calibrate" | "propagate", shards: number): string[] {
  return shards === 0 ? [files[kind]] : Array.from({ length: shards }, (_, k) => files.calls(kind, k));
}

/** The records of `list`'s files, one file after another. */
export async function* callRecords(list: readonly string[]): AsyncGenerator<RoutedInput> {
  for (const f of list) yield* streamRecords(f);
}

/**
 * One pass over the layer's inputs with the MoE block's routed step replaced by writing its calls to
 * `to.file` (`calibrate`: inside the calibration context; `tag`: privateWriter's).
 */
export async function streamCalls(
  steps: LayerSteps,
  layer: DecoderLayer,
  i: number,
  to: { file: string; calibrate: boolean; tag?: string },
  endShard?: () => void,
): Promise<void> {
  const { calibrate } = to;
  const w = streamWriter(to.file, to.tag);
  try {
    const pass = (l: DecoderLayer): Promise<void> =>
      withRoutedOverride(
        async (input) => w.append(input),
        () =>
          steps.eachInput(
            i,
            async (h, done, tokens) => {
              await l.call(h);
              const phase = calibrate ? "calibrate" : "propagate";
              steps.run.opts.onProgress?.({ kind: "samples", layer: i, phase, done, total: steps.samples, tokens });
            },
            endShard,
          ),
      );
    if (calibrate)
      await withMoeCalibration(
        layer,
        { calibrateAllExperts: steps.calibrateAllExperts, config: steps.run.config, fastPath: steps.fastPath },
        pass,
      );
    else await pass(layer);
    w.commit();
  } catch (e) {
    w.abandon();
    throw e;
  }
}

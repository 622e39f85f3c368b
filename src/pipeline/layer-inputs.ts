/**
 * A layer's calibration inputs in the work folder (`hidden-<i>.bin`: every sample's hidden states,
 * float32 in sample order) and the shards they are read in: whole samples of at most --shard-tokens
 * tokens. A shard is also the order the non-expert Linears' statistics are summed in, and a
 * distributed run's token-shard job, which reads its shard and writes its outputs into the
 * coordinator's preallocated file at the shard's place.
 */
import fs from "node:fs";
import path from "node:path";
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError, asFormatError } from "../errors.js";
import { readAt } from "../io/files.js";
import { bytesOf, writeAll } from "../io/writer.js";
import { checkStop } from "../util/interrupt.js";
import type { AnyModule } from "../nn/module.js";
import { BATCH_TOKENS, type HiddenWriter, RESTART, createPrivate, openPrivate, syncFolder } from "./work-folder.js";

/** A shard of the calibration samples: `lengths` of consecutive samples, `offset` tokens before the first. */
export interface InputShard {
  shard: number;
  offset: number;
  lengths: number[];
}

/** The shards of samples of `lengths`: whole samples, at most `maxTokens` tokens a shard (a longer sample alone). */
export function inputShards(lengths: readonly number[], maxTokens: number): InputShard[] {
  const shards: InputShard[] = [];
  let offset = 0;
  for (let s0 = 0; s0 < lengths.length; ) {
    let s1 = s0;
    let tokens = 0;
    while (s1 < lengths.length && (s1 === s0 || tokens + (lengths[s1] as number) <= maxTokens)) tokens += lengths[s1++] as number;
    shards.push({ shard: shards.length, offset, lengths: lengths.slice(s0, s1) });
    offset += tokens;
    s0 = s1;
  }
  return shards;
}

const tokensOf = (s: InputShard): number => s.lengths.reduce((a, b) => a + b, 0);

/** The hidden states after layer `i` in the work folder `dir` (-1: the embeddings, the input of layer 0). */
export function hiddenFileOf(dir: string, i: number): string {
  return path.join(dir, i < 0 ? "embeddings.bin" : `hidden-${i}.bin`);
}

/** Shard `s` of an open hidden states file, [1, S, H] per sample (views of one buffer). */
export function readShard(fd: number, file: string, s: InputShard, H: number): Tensor[] {
  const buf = new Float32Array(tokensOf(s) * H);
  readAt(fd, file, new Uint8Array(buf.buffer), 4 * H * s.offset, asFormatError);
  let off = 0;
  return s.lengths.map((S) => {
    const t = new Tensor(buf.subarray(off, off + S * H), [1, S, H]);
    off += S * H;
    return t;
  });
}

/** Shard `s` of the hidden states after layer `i` (a token-shard job's inputs), checked to lie inside the file. */
export function readHiddenShard(dir: string, i: number, s: InputShard, H: number): Tensor[] {
  const file = hiddenFileOf(dir, i);
  const { fd, size } = openPrivate(file);
  try {
    if (size < 4 * H * (s.offset + tokensOf(s)))
      throw new CheckpointFormatError(
        `${file}: ${size} bytes, too few for shard ${s.shard} (tokens ${s.offset}+${tokensOf(s)}); ${RESTART}`,
      );
    return readShard(fd, file, s, H);
  } finally {
    fs.closeSync(fd);
  }
}

/** Samples [a, b) of `lengths` from `a` on: consecutive samples of one length, at most BATCH_TOKENS tokens (a sample longer alone). */
function batchEnd(lengths: readonly number[], a: number): number {
  const S = lengths[a] as number;
  let b = a + 1;
  while (b < lengths.length && lengths[b] === S && (b - a + 1) * S <= BATCH_TOKENS) b++;
  return b;
}

/**
 * The batches of a shard's samples: consecutive samples of one length as one batch [B, S, H] of at
 * most BATCH_TOKENS tokens (a view, no copy), with the samples in it.
 */
function* batchesOf(samples: readonly Tensor[]): Generator<{ h: Tensor; samples: number }> {
  const lengths = samples.map((t) => t.dim(1));
  for (let a = 0; a < samples.length; ) {
    const b = batchEnd(lengths, a);
    const first = samples[a] as Tensor;
    const [, S, H] = first.shape as [number, number, number];
    const B = b - a;
    yield { h: B === 1 ? first : new Tensor(new Float32Array(first.data.buffer, first.data.byteOffset, B * S * H), [B, S, H]), samples: B };
    a = b;
  }
}

/** The number of batches (MoE calls) of a shard's samples. */
export function batchCount(s: InputShard): number {
  let n = 0;
  for (let a = 0; a < s.lengths.length; n++) a = batchEnd(s.lengths, a);
  return n;
}

/**
 * A layer's inputs, shard by shard and batch by batch (batchesOf), each batch given to `each` with the
 * samples and tokens done so far; `endShard` is called after each shard.
 */
export async function eachInShards(
  shards: AsyncIterable<Tensor[]> | Iterable<Tensor[]>,
  each: (h: Tensor, done: number, tokens: number) => Promise<void>,
  endShard?: () => void,
): Promise<void> {
  let done = 0;
  let tokens = 0;
  for await (const shard of shards) {
    for (const { h, samples } of batchesOf(shard)) {
      done += samples;
      tokens += h.dim(0) * h.dim(1);
      checkStop();
      await each(h, done, tokens);
    }
    endShard?.();
  }
}

/** The hidden size of a model (its embeddings' width). */
export function hiddenSizeOf(model: AnyModule): number {
  return (model.namedParameters().find(([n]) => n === "model.embed_tokens.weight")?.[1].shape[1] ?? 0) as number;
}

/** The tokens of `shards`. */
export const tokensIn = (shards: readonly InputShard[]): number => shards.reduce((a, s) => a + tokensOf(s), 0);

/**
 * Each shard with where its calls' routed sums start in a sums file (the stream records of the
 * layer's calls in order: 12 bytes and T H floats a call): the output jobs of a layer.
 */
export function withSumsAt(shards: readonly InputShard[], H: number): (InputShard & { at: number })[] {
  let calls = 0;
  return shards.map((s) => {
    const at = 12 * calls + 4 * H * s.offset;
    calls += batchCount(s);
    return { ...s, at };
  });
}

/**
 * The hidden states after layer `i` in the work folder `dir`, written by other processes (output
 * shard jobs) at their shards' places into a preallocated private file of `tokens` tokens named by
 * the coordinator's `session`; `commit` makes it the layer's outputs (fsync, rename), as a
 * HiddenWriter's does.
 */
export function hiddenSlots(
  dir: string,
  i: number,
  size: { tokens: number; H: number },
  session: string,
): Pick<HiddenWriter, "commit" | "abandon"> {
  const tmp = slotsFileOf(dir, i, session);
  const fd = createPrivate(tmp);
  try {
    fs.ftruncateSync(fd, 4 * size.H * size.tokens);
  } finally {
    fs.closeSync(fd);
  }
  return {
    commit: () => {
      const { fd: f } = openPrivate(tmp);
      try {
        fs.fsyncSync(f);
      } finally {
        fs.closeSync(f);
      }
      fs.renameSync(tmp, hiddenFileOf(dir, i));
      syncFolder(dir);
    },
    abandon: () => fs.rmSync(tmp, { force: true }),
  };
}

/** The temporary file a layer's outputs are written into, shard by shard, by other processes (the jobs of the coordinator session `session`). */
export const slotsFileOf = (dir: string, i: number, session: string): string => `${hiddenFileOf(dir, i)}.${session}.slots`;

/**
 * A token-shard job's outputs (`out`: its samples' [1, S, H] or batches' [B, S, H] in order), written
 * at the shard's place in the layer's preallocated outputs (a regular file of the expected size,
 * never through a link) and flushed to disk. A job done twice writes the same bytes to the same place.
 */
export function writeHiddenShard(dir: string, i: number, s: InputShard & { slots: string }, H: number, out: readonly Tensor[]): void {
  const file = slotsFileOf(dir, i, s.slots);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW);
  } catch (cause) {
    throw new CheckpointFormatError(`${file}: cannot open the layer's outputs (${(cause as Error).message}); ${RESTART}`, { cause });
  }
  try {
    const st = fs.fstatSync(fd);
    const end = 4 * H * (s.offset + tokensOf(s));
    if (!st.isFile() || st.size < end) throw new CheckpointFormatError(`${file}: not the layer's preallocated outputs; ${RESTART}`);
    let pos = 4 * H * s.offset;
    for (const t of out) {
      const bytes = bytesOf(t.data);
      writeAll(fd, bytes, file, pos);
      pos += bytes.byteLength;
    }
    if (pos !== end)
      throw new CheckpointFormatError(`${file}: shard ${s.shard} wrote ${pos - 4 * H * s.offset} bytes, not ${end - 4 * H * s.offset}`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

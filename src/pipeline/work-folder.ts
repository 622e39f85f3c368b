/**
 * oneshot's work folder, `.<output>.moecal-work` beside the output: after each finished layer, its
 * quantized tensors, the propagated hidden states of every calibration sample and the report so
 * far, each written atomically (temporary file, fsync, rename) with the state file last. A rerun
 * of the same command resumes after the last finished layer; a rerun with other inputs is
 * refused, naming what differs (work-manifest.ts says what identifies a run).
 *
 * The folder holds the calibration text as embeddings, so it is private (0700, files 0600) and
 * trusted only when it is what moecal made: a real folder (not a link) owned by this user with no
 * access for others. Every file in it is opened without following links, and temporaries are
 * created exclusively, so nothing planted there is written through.
 */
import fs from "node:fs";
import path from "node:path";
import type { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError, IoError, UsageError, asFormatError } from "../errors.js";
import { readAt } from "../io/files.js";
import { SafetensorsFile } from "../io/safetensors.js";
import { type LazyRaw, type NamedRaw, bytesOf, encodeSafetensorsLazy, writeAll } from "../io/writer.js";
import { hiddenFileOf, inputShards, readShard } from "./layer-inputs.js";
import { type WorkManifest, type WorkState, differences, shapeProblem, stateProblem } from "./work-manifest.js";

export type { WorkManifest, WorkState } from "./work-manifest.js";

/**
 * Points inside a layer's checkpoint (calibrated), inside an expert group's (its tensors, its routed
 * sums, its state), or after an output shard's file and its record (data-free), for tests that stop the process there.
 */
export type CheckpointStage = "tensors" | "hidden" | "state" | "group-tensors" | "group-sums" | "group" | "shard-file" | "shard";

/**
 * Calibration samples are read back from the work folder in shards of whole samples of at most this
 * many tokens by default (--shard-tokens; their memory: 4 H bytes per token). A shard is also the
 * unit the non-expert Linears' statistics are summed by, and a distributed run's token-shard job.
 */
export const DEFAULT_SHARD_TOKENS = 65536;

/**
 * Consecutive samples of one length go through a layer together, up to this many tokens: larger
 * products per routed expert and fewer engine calls (docs/performance.md).
 */
export const BATCH_TOKENS = 2048;

const MANIFEST = "manifest.json";
const STATE = "state.json";
/** Largest manifest or state file read back (a state holds per-layer reports and fallbacks). */
const MAX_STATE_BYTES = 256 * 1024 * 1024;
export const RESTART = "rerun with --restart to discard the work folder and start over";

/** fsync a folder, so a rename in it survives a power loss. */
export function syncFolder(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Create `file` for writing, private and exclusively: a stale temporary (or a link planted in its place) is unlinked first, never followed. */
export function createPrivate(file: string): number {
  fs.rmSync(file, { force: true });
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  return fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
}

/** Open a file of the work folder for reading: a regular file, never through a link. */
export function openPrivate(file: string): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const why = code === "ELOOP" ? "is a symlink, which moecal never follows in its work folder" : (cause as Error).message;
    throw new CheckpointFormatError(`${file}: ${why}; ${RESTART}`, { cause });
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile()) {
    fs.closeSync(fd);
    throw new CheckpointFormatError(`${file}: not a regular file; ${RESTART}`);
  }
  return { fd, size: st.size };
}

/** Hidden states being written, one sample at a time. */
export interface HiddenWriter {
  append(t: Tensor): void;
  commit(): void;
  /** close and delete the temporary file (the run failed) */
  abandon(): void;
}

/** A file of the work folder written in parts: to a private temporary sibling; `commit` makes it visible (fsync, rename, fsync of the folder). */
export interface PrivateWriter {
  write(bytes: Uint8Array): void;
  commit(): void;
  /** close and delete the temporary file (the run failed) */
  abandon(): void;
}

export function privateWriter(file: string, tag?: string): PrivateWriter {
  // a writer's own temporary name, when several processes may write the same file at once (a
  // redelivered job beside the slow one): not one a resumed run's clean-up of ".tmp" removes
  const tmp = tag === undefined ? `${file}.tmp` : `${file}.${tag}.part`;
  const fd = createPrivate(tmp);
  let open = true;
  const close = (): void => {
    if (open) fs.closeSync(fd);
    open = false;
  };
  return {
    write: (bytes) => {
      try {
        writeAll(fd, bytes, file);
      } catch (e) {
        close();
        throw e;
      }
    },
    commit: () => {
      try {
        fs.fsyncSync(fd);
      } finally {
        close();
      }
      fs.renameSync(tmp, file);
      syncFolder(path.dirname(file));
    },
    abandon: () => {
      close();
      fs.rmSync(tmp, { force: true });
    },
  };
}

/** Write a file atomically: a private temporary sibling, fsync, rename, fsync of the folder. */
export function writeAtomic(file: string, parts: Iterable<Uint8Array>, tag?: string): void {
  try {
    const w = privateWriter(file, tag);
    for (const p of parts) w.write(p);
    w.commit();
  } catch (cause) {
    if (cause instanceof IoError) throw cause;
    throw new IoError(`${file}: write failed (${(cause as Error).message})`, { cause });
  }
}

/** A safetensors file of the work folder, opened once it is known to be a regular file, not a link. */
export function openPrivateSafetensors(file: string): SafetensorsFile {
  fs.closeSync(openPrivate(file).fd);
  return SafetensorsFile.open(file);
}

/** The text of a small file of the work folder (a manifest or a state), read without following links. */
export function readPrivateText(file: string, what: string): string {
  const { fd, size } = openPrivate(file);
  try {
    if (size > MAX_STATE_BYTES)
      throw new CheckpointFormatError(`${file}: ${size} bytes, more than a ${what} holds (${MAX_STATE_BYTES}); ${RESTART}`);
    const buf = Buffer.alloc(size);
    readAt(fd, file, buf, 0, asFormatError);
    return buf.toString("utf8");
  } finally {
    fs.closeSync(fd);
  }
}

/** A manifest or state file, parsed and checked for the shape moecal writes. */
export function readChecked<T>(file: string, kind: "manifest" | "state" | "shards"): T {
  const text = readPrivateText(file, "work state");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new CheckpointFormatError(`${file}: not valid JSON (${(cause as Error).message}); ${RESTART}`, { cause });
  }
  const problem = shapeProblem(kind, value);
  if (problem) throw new CheckpointFormatError(`${file}: not a work ${kind} moecal wrote (${problem}); ${RESTART}`);
  return value as T;
}

/** Work folders of this process (the signal handler names the ones with finished layers). */
const open = new Set<string>();

/** The file whose presence says a work folder holds data-free shards a rerun resumes from (shard-log.ts). */
export const SHARD_STATE = "shards.json";

/** Work folders of this process that hold finished work (layers, or data-free shards) a rerun resumes from. */
export function keptWorkFolders(): string[] {
  return [...open].filter((d) => fs.existsSync(path.join(d, STATE)) || fs.existsSync(path.join(d, SHARD_STATE)));
}

/** Count `dir` as a work folder of this process (a signal keeps it when it holds finished work, else removes it). */
export function trackWorkFolder(dir: string): void {
  open.add(dir);
}

/** Stop counting `dir` and remove it (its run is committed). */
export function removeWorkFolder(dir: string): void {
  open.delete(dir);
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * For a process that stops now (a signal): work folders without a finished layer (the embeddings of
 * the whole calibration set, nothing to resume from) are removed; those with one are kept and returned.
 */
export function releaseWorkFolders(): string[] {
  const kept = keptWorkFolders();
  for (const d of open) if (!kept.includes(d)) fs.rmSync(d, { recursive: true, force: true });
  open.clear();
  return kept;
}

/** The work folder of an output. */
export function workFolderOf(output: string): string {
  return path.join(path.dirname(output), `.${path.basename(output)}.moecal-work`);
}

/** Bytes the work folder of `output` holds now (0 when there is none): freed by --restart, reused by a resume. */
export function workFolderBytes(output: string): number {
  const dir = workFolderOf(output);
  const st = lstatOrNull(dir);
  if (!st?.isDirectory()) return 0;
  let total = 0;
  for (const f of fs.readdirSync(dir)) {
    const fst = lstatOrNull(path.join(dir, f));
    if (fst?.isFile()) total += fst.size;
  }
  return total;
}

export function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

/**
 * Refuse a work folder moecal did not make: a link, not a folder, another user's, or one others
 * may read (moecal's are 0700; `restart` may remove such a folder of this user's).
 */
export function assertOwnFolder(dir: string, st: fs.Stats, restart: boolean): void {
  const refuse = (why: string): never => {
    throw new UsageError(`the work folder ${dir} ${why}; moecal trusts only the private folder it made itself: remove it`);
  };
  if (st.isSymbolicLink()) refuse("is a symlink (moecal never writes through links)");
  if (!st.isDirectory()) refuse("is not a folder");
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) refuse(`belongs to another user (uid ${st.uid})`);
  if ((st.mode & 0o077) !== 0 && !restart)
    throw new UsageError(
      `the work folder ${dir} is open to other users (mode ${(st.mode & 0o777).toString(8)}), so moecal did not make it and does not trust it; remove it, or pass --restart to discard it`,
    );
}

export class WorkFolder {
  readonly dir: string;
  /** the state to resume from, or null for a fresh start */
  readonly resume: WorkState | null;

  /**
   * Open (or start) the work folder of `output` for a model of `layers` layers; `restart`
   * discards an old one. Call with the output's lock held.
   */
  constructor(output: string, manifest: WorkManifest, restart: boolean, layers: number) {
    this.dir = workFolderOf(output);
    const st = lstatOrNull(this.dir);
    if (st) assertOwnFolder(this.dir, st, restart);
    const manifestFile = path.join(this.dir, MANIFEST);
    const stateFile = path.join(this.dir, STATE);
    if (st && !restart && lstatOrNull(path.join(this.dir, SHARD_STATE)))
      throw new UsageError(
        `${this.dir} holds the finished shards of a data-free run to this output; rerun that command to resume it, or pass --restart to discard it`,
      );
    if (st && !restart && lstatOrNull(stateFile)) {
      const diff = differences(readChecked<WorkManifest>(manifestFile, "manifest"), manifest);
      if (diff.length)
        throw new UsageError(
          `${this.dir} holds the finished layers of a run with other inputs (differs: ${diff.join(", ")}); rerun it with its own inputs to resume, or pass --restart to discard it`,
        );
      const state = readChecked<WorkState>(stateFile, "state");
      this.assertConsistent(state, layers);
      // temporaries of the run that stopped are garbage (and their space the run's own)
      for (const f of fs.readdirSync(this.dir))
        if (f.endsWith(".tmp") || f.endsWith(".slots")) fs.rmSync(path.join(this.dir, f), { force: true });
      this.resume = state;
      open.add(this.dir);
      return;
    }
    // nothing finished yet (or no folder, or --restart): start afresh in a private folder made here
    fs.rmSync(this.dir, { recursive: true, force: true });
    try {
      fs.mkdirSync(this.dir, { mode: 0o700 });
      fs.chmodSync(this.dir, 0o700);
    } catch (cause) {
      throw new IoError(`cannot create the work folder ${this.dir} (${(cause as Error).message})`, { cause });
    }
    open.add(this.dir);
    writeAtomic(manifestFile, [Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`)]);
    this.resume = null;
  }

  /** A state must match the files beside it: every finished layer's tensors, and the hidden states the next layer reads. */
  private assertConsistent(state: WorkState, layers: number): void {
    const damaged = (why: string): never => {
      throw new CheckpointFormatError(`the work folder ${this.dir} is damaged: ${why}; ${RESTART}`);
    };
    const problem = stateProblem(state, layers);
    if (problem) damaged(`state.json: ${problem}`);
    const absent = (file: string): string | null => {
      const st = lstatOrNull(file);
      if (st?.isFile()) return null;
      return `${path.basename(file)} is ${st ? "not a regular file (moecal never follows links in its work folder)" : "missing"}`;
    };
    for (let i = 0; i <= state.layer; i++) {
      const why = absent(this.layerFile(i));
      if (why) damaged(`state.json says layer ${state.layer} finished, but ${why}`);
    }
    const hidden = state.layer < layers - 1 ? absent(this.hiddenFile(state.layer)) : null;
    if (hidden) damaged(`state.json says layer ${state.layer} finished, but its output hidden states' ${hidden}`);
  }

  private layerFile(i: number): string {
    return path.join(this.dir, `layer-${i}.safetensors`);
  }

  /** The hidden states after layer `i` (-1: the embeddings, the input of layer 0). */
  private hiddenFile(i: number): string {
    return hiddenFileOf(this.dir, i);
  }

  /**
   * Write the hidden states after layer `i` (-1: the embeddings) one sample at a time, as float32
   * in sample order, to a temporary file; `commit` makes it visible (fsync, rename), as
   * `saveLayer` does for a layer's, between its tensors and its state.
   */
  hiddenWriter(i: number): HiddenWriter {
    const w = privateWriter(this.hiddenFile(i));
    return {
      append: (t) => w.write(bytesOf(t.data)),
      commit: w.commit,
      abandon: w.abandon,
    };
  }

  /**
   * The hidden states after layer `i` (-1: the embeddings), [1, S, H] per sample of the given
   * lengths, read from disk in shards of whole samples of at most `maxTokens` tokens.
   */
  async *hiddenChunks(i: number, lengths: readonly number[], H: number, maxTokens: number): AsyncGenerator<Tensor[]> {
    const file = this.hiddenFile(i);
    const expected = lengths.reduce((a, b) => a + b, 0) * H * 4;
    if (!lstatOrNull(file)) throw new CheckpointFormatError(`${file}: missing; ${RESTART}`);
    const { fd, size } = openPrivate(file);
    try {
      if (size !== expected) throw new CheckpointFormatError(`${file}: ${size} bytes, expected ${expected}; ${RESTART}`);
      for (const s of inputShards(lengths, maxTokens)) yield readShard(fd, file, s, H);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Record a finished layer: its tensors, the hidden states the next layer reads (written already,
   * made visible now; none after the last layer), then the state; the previous layer's hidden
   * states are deleted afterwards.
   */
  saveLayer(
    state: WorkState,
    tensors: (NamedRaw | LazyRaw)[],
    hidden: Pick<HiddenWriter, "commit"> | null,
    stop?: (stage: CheckpointStage) => void,
  ): void {
    const i = state.layer;
    writeAtomic(this.layerFile(i), encodeSafetensorsLazy(tensors));
    stop?.("tensors");
    hidden?.commit();
    stop?.("hidden");
    writeAtomic(path.join(this.dir, STATE), [Buffer.from(JSON.stringify(state))]);
    stop?.("state");
    fs.rmSync(this.hiddenFile(i - 1), { force: true });
  }

  /** Save the state as it is (inside a layer run in expert groups: what makes the folder one a rerun resumes from). */
  saveState(state: WorkState): void {
    writeAtomic(path.join(this.dir, STATE), [Buffer.from(JSON.stringify(state))]);
  }

  /** The quantized and copied tensors of layer `i`, in the order they were recorded, each read when it is asked for. */
  *layerTensors(i: number): Generator<NamedRaw> {
    const f = openPrivateSafetensors(this.layerFile(i));
    for (const n of f.tensors.keys()) yield { name: n, ...f.readRaw(n) };
  }

  /** Whether a layer has finished (in this run or an earlier one). */
  get hasFinishedLayers(): boolean {
    return fs.existsSync(path.join(this.dir, STATE));
  }

  remove(): void {
    removeWorkFolder(this.dir);
  }
}

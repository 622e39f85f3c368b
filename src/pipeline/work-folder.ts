/**
 * oneshot's work folder, `.<output>.moecal-work` beside the output: after each finished layer, its
 * quantized tensors, the propagated hidden states of every calibration sample and the report so
 * far, each written atomically (temporary file, fsync, rename) with the state file last. A rerun
 * of the same command resumes after the last finished layer; a rerun with other inputs is
 * refused, naming what differs. The manifest identifies the run: moecal's version, the model
 * files (config.json and every weight file's header), the dataset's SHA-256 and the options.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError, IoError, UsageError } from "../errors.js";
import { SafetensorsFile } from "../io/safetensors.js";
import { type NamedRaw, encodeSafetensors, writeAll } from "../io/writer.js";
import type { LayerCoverage } from "../calibration/coverage.js";
import type { Fallback } from "./quantize-layer.js";
import type { LayerReport } from "./report.js";

export interface WorkManifest {
  moecal_version: string;
  /** file name -> SHA-256 of config.json and of each weight file's header */
  model: Record<string, string>;
  dataset_sha256: string;
  options: Record<string, unknown>;
}

/** What the report holds after the last finished layer. */
export interface WorkState {
  /** the last finished layer */
  layer: number;
  layers: LayerReport[];
  coverage: Record<string, LayerCoverage>;
  fallbacks: Fallback[];
  allTokenFallbacks: string[];
}

/** Points inside a layer's checkpoint, for tests that stop the process there. */
export type CheckpointStage = "tensors" | "hidden" | "state";

/** Calibration samples are read back from the work folder in groups of at most this many tokens (their memory: 4 H bytes per token). */
export const HIDDEN_CHUNK_TOKENS = 65536;

/**
 * Consecutive samples of one length go through a layer together, up to this many tokens: larger
 * products per routed expert and fewer engine calls (docs/performance.md).
 */
export const BATCH_TOKENS = 2048;

const MANIFEST = "manifest.json";
const STATE = "state.json";
/** Largest manifest or state file read back (a state holds per-layer reports and fallbacks). */
const MAX_STATE_BYTES = 256 * 1024 * 1024;

/** SHA-256 of config.json and of each weight file's safetensors header (not its data: fast for any size). */
export function modelIdentity(dir: string, weightFiles: readonly string[]): Record<string, string> {
  const id: Record<string, string> = {};
  const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
  id["config.json"] = sha(fs.readFileSync(path.join(dir, "config.json")));
  for (const f of weightFiles) {
    const fd = fs.openSync(path.join(dir, f), "r");
    try {
      const len = Buffer.alloc(8);
      fs.readSync(fd, len, 0, 8, 0);
      const n = Number(len.readBigUInt64LE(0));
      const header = Buffer.alloc(n);
      fs.readSync(fd, header, 0, n, 8);
      id[f] = sha(Buffer.concat([len, header]));
    } finally {
      fs.closeSync(fd);
    }
  }
  return id;
}

/** fsync a folder, so a rename in it survives a power loss. */
function syncFolder(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Hidden states being written, one sample at a time. */
export interface HiddenWriter {
  append(t: Tensor): void;
  commit(): void;
  /** close and delete the temporary file (the run failed) */
  abandon(): void;
}

/** Write a file atomically: a temporary sibling, fsync, rename, fsync of the folder. */
function writeAtomic(file: string, parts: readonly Uint8Array[]): void {
  const tmp = `${file}.tmp`;
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      for (const p of parts) writeAll(fd, p, file);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    syncFolder(path.dirname(file));
  } catch (cause) {
    if (cause instanceof IoError) throw cause;
    throw new IoError(`${file}: write failed (${(cause as Error).message})`, { cause });
  }
}

function readJson<T>(file: string): T {
  const st = fs.statSync(file);
  if (st.size > MAX_STATE_BYTES)
    throw new CheckpointFormatError(`${file}: ${st.size} bytes, more than a work state holds (${MAX_STATE_BYTES})`);
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as T;
  } catch (cause) {
    throw new CheckpointFormatError(
      `${file}: not valid JSON (${(cause as Error).message}); rerun with --restart to discard the work folder`,
      {
        cause,
      },
    );
  }
}

/** The manifest fields that differ, named for the user. */
function differences(a: WorkManifest, b: WorkManifest): string[] {
  const out: string[] = [];
  if (a.moecal_version !== b.moecal_version) out.push(`moecal version (${a.moecal_version} -> ${b.moecal_version})`);
  if (a.dataset_sha256 !== b.dataset_sha256) out.push("dataset contents");
  for (const f of new Set([...Object.keys(a.model), ...Object.keys(b.model)])) if (a.model[f] !== b.model[f]) out.push(`model file ${f}`);
  for (const k of new Set([...Object.keys(a.options), ...Object.keys(b.options)]))
    if (JSON.stringify(a.options[k]) !== JSON.stringify(b.options[k]))
      out.push(`option ${k} (${JSON.stringify(a.options[k]) ?? "unset"} -> ${JSON.stringify(b.options[k]) ?? "unset"})`);
  return out;
}

/** Work folders of this process (the signal handler names the ones with finished layers). */
const open = new Set<string>();

/** Work folders of this process that hold finished layers a rerun resumes from. */
export function keptWorkFolders(): string[] {
  return [...open].filter((d) => fs.existsSync(path.join(d, STATE)));
}

export class WorkFolder {
  readonly dir: string;
  /** the state to resume from, or null for a fresh start */
  readonly resume: WorkState | null;

  /** Open (or start) the work folder of `output`; `restart` discards an old one. Call with the output's lock held. */
  constructor(output: string, manifest: WorkManifest, restart: boolean) {
    this.dir = path.join(path.dirname(output), `.${path.basename(output)}.moecal-work`);
    if (restart) fs.rmSync(this.dir, { recursive: true, force: true });
    const manifestFile = path.join(this.dir, MANIFEST);
    const stateFile = path.join(this.dir, STATE);
    if (fs.existsSync(manifestFile) && fs.existsSync(stateFile)) {
      const diff = differences(readJson<WorkManifest>(manifestFile), manifest);
      if (diff.length)
        throw new UsageError(
          `${this.dir} holds the finished layers of a run with other inputs (differs: ${diff.join(", ")}); rerun it with its own inputs to resume, or pass --restart to discard it`,
        );
      this.resume = readJson<WorkState>(stateFile);
      open.add(this.dir);
      return;
    }
    // nothing finished yet (or no folder): start afresh
    fs.rmSync(this.dir, { recursive: true, force: true });
    try {
      fs.mkdirSync(this.dir, { recursive: true });
    } catch (cause) {
      throw new IoError(`cannot create the work folder ${this.dir} (${(cause as Error).message})`, { cause });
    }
    open.add(this.dir);
    writeAtomic(manifestFile, [Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`)]);
    this.resume = null;
  }

  private layerFile(i: number): string {
    return path.join(this.dir, `layer-${i}.safetensors`);
  }

  /** The hidden states after layer `i` (-1: the embeddings, the input of layer 0). */
  private hiddenFile(i: number): string {
    return path.join(this.dir, i < 0 ? "embeddings.bin" : `hidden-${i}.bin`);
  }

  /**
   * Write the hidden states after layer `i` (-1: the embeddings) one sample at a time, as float32
   * in sample order, to a temporary file; `commit` makes it visible (fsync, rename), as
   * `saveLayer` does for a layer's, between its tensors and its state.
   */
  hiddenWriter(i: number): HiddenWriter {
    const file = this.hiddenFile(i);
    const tmp = `${file}.tmp`;
    const fd = fs.openSync(tmp, "w");
    let open = true;
    const close = (): void => {
      if (open) fs.closeSync(fd);
      open = false;
    };
    return {
      append: (t) => {
        try {
          writeAll(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), tmp);
        } catch (e) {
          close();
          throw e;
        }
      },
      commit: () => {
        fs.fsyncSync(fd);
        close();
        fs.renameSync(tmp, file);
        syncFolder(this.dir);
      },
      abandon: () => {
        close();
        fs.rmSync(tmp, { force: true });
      },
    };
  }

  /**
   * The hidden states after layer `i` (-1: the embeddings), [1, S, H] per sample of the given
   * lengths, read from disk in groups of samples of at most `maxTokens` tokens.
   */
  async *hiddenChunks(i: number, lengths: readonly number[], H: number, maxTokens: number): AsyncGenerator<Tensor[]> {
    const file = this.hiddenFile(i);
    const expected = lengths.reduce((a, b) => a + b, 0) * H * 4;
    const size = fs.existsSync(file) ? fs.statSync(file).size : -1;
    if (size !== expected)
      throw new CheckpointFormatError(
        `${file}: ${size < 0 ? "missing" : `${size} bytes`}, expected ${expected}; rerun with --restart to discard the work folder`,
      );
    const fd = fs.openSync(file, "r");
    try {
      let pos = 0;
      for (let s0 = 0; s0 < lengths.length; ) {
        let s1 = s0;
        let tokens = 0;
        while (s1 < lengths.length && (s1 === s0 || tokens + (lengths[s1] as number) <= maxTokens)) tokens += lengths[s1++] as number;
        const buf = new Float32Array(tokens * H);
        const bytes = new Uint8Array(buf.buffer);
        let done = 0;
        while (done < bytes.byteLength) {
          const n = fs.readSync(fd, bytes, done, bytes.byteLength - done, pos + done);
          if (n === 0) throw new CheckpointFormatError(`${file}: ended early`);
          done += n;
        }
        pos += bytes.byteLength;
        const chunk: Tensor[] = [];
        let off = 0;
        for (let s = s0; s < s1; s++) {
          const S = lengths[s] as number;
          chunk.push(new Tensor(buf.subarray(off, off + S * H), [1, S, H]));
          off += S * H;
        }
        yield chunk;
        s0 = s1;
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Record a finished layer: its tensors, the hidden states the next layer reads (written already,
   * made visible now; none after the last layer), then the state; the previous layer's hidden
   * states are deleted afterwards.
   */
  saveLayer(state: WorkState, tensors: NamedRaw[], hidden: HiddenWriter | null, stop?: (stage: CheckpointStage) => void): void {
    const i = state.layer;
    writeAtomic(this.layerFile(i), encodeSafetensors(tensors));
    stop?.("tensors");
    hidden?.commit();
    stop?.("hidden");
    writeAtomic(path.join(this.dir, STATE), [Buffer.from(JSON.stringify(state))]);
    stop?.("state");
    fs.rmSync(this.hiddenFile(i - 1), { force: true });
  }

  /** The quantized and copied tensors of layer `i`, in the order they were recorded. */
  layerTensors(i: number): NamedRaw[] {
    const f = SafetensorsFile.open(this.layerFile(i));
    return [...f.tensors.keys()].map((n) => ({ name: n, ...f.readRaw(n) }));
  }

  /** Whether a layer has finished (in this run or an earlier one). */
  get hasFinishedLayers(): boolean {
    return fs.existsSync(path.join(this.dir, STATE));
  }

  remove(): void {
    open.delete(this.dir);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * The data-free run's resume state, in the output's work folder (the calibrated run's, with the
 * same trust rules: a private folder moecal made, files never opened through links): the manifest
 * identifying the run and, after each output shard is finished and made durable, the list of
 * finished shards (shards.json, written atomically). A rerun of the same command after a crash
 * goes on after the last finished shard; its output is byte-identical to an uninterrupted run's.
 */
import fs from "node:fs";
import path from "node:path";
import { CheckpointFormatError, UsageError } from "../errors.js";
import { SafetensorsFile } from "../io/safetensors.js";
import type { FinishedShard } from "../io/writer.js";
import { type ShardState, type WorkManifest, differences } from "./work-manifest.js";
import {
  RESTART,
  SHARD_STATE,
  assertOwnFolder,
  lstatOrNull,
  openPrivate,
  readChecked,
  removeWorkFolder,
  trackWorkFolder,
  workFolderOf,
  writeAtomic,
} from "./work-folder.js";

const MANIFEST = "manifest.json";
/** The calibrated run's state file: a folder holding one is not the data-free run's to discard. */
const LAYER_STATE = "state.json";

export class ShardLog {
  readonly dir: string;
  /** shards an earlier run finished (empty on a fresh start) */
  readonly done: readonly FinishedShard[];

  /** Open (or start) the work folder of `output`; `restart` discards an old one. Call with the output's lock held. */
  constructor(output: string, manifest: WorkManifest, restart: boolean) {
    this.dir = workFolderOf(output);
    const st = lstatOrNull(this.dir);
    if (st) assertOwnFolder(this.dir, st, restart);
    const stateFile = path.join(this.dir, SHARD_STATE);
    if (st && !restart && lstatOrNull(path.join(this.dir, LAYER_STATE)))
      throw new UsageError(
        `${this.dir} holds the finished layers of a calibrated run to this output; rerun that command (with --calibrate) to resume it, or pass --restart to discard it`,
      );
    if (st && !restart && lstatOrNull(stateFile)) {
      const diff = differences(readChecked<WorkManifest>(path.join(this.dir, MANIFEST), "manifest"), manifest);
      if (diff.length)
        throw new UsageError(
          `${this.dir} holds the finished shards of a run with other inputs (differs: ${diff.join(", ")}); rerun it with its own inputs to resume, or pass --restart to discard it`,
        );
      const state = readChecked<ShardState>(stateFile, "shards");
      state.shards.forEach((s, i) => {
        this.assertShard(s, i);
      });
      // anything else (the stopped run's partial shard, temporaries) is garbage, and its space the run's own
      const keep = new Set([MANIFEST, SHARD_STATE, ...state.shards.map((s) => s.file)]);
      for (const f of fs.readdirSync(this.dir)) if (!keep.has(f)) fs.rmSync(path.join(this.dir, f), { force: true, recursive: true });
      this.done = state.shards;
      trackWorkFolder(this.dir);
      return;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { mode: 0o700 });
    fs.chmodSync(this.dir, 0o700);
    trackWorkFolder(this.dir);
    writeAtomic(path.join(this.dir, MANIFEST), [Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`)]);
    this.done = [];
  }

  /** A recorded shard must be there as recorded: its index in its name, a regular file of its size holding its tensors in order. */
  private assertShard(s: FinishedShard, i: number): void {
    const file = path.join(this.dir, s.file);
    const damaged = (why: string): never => {
      throw new CheckpointFormatError(`the work folder ${this.dir} is damaged: ${SHARD_STATE} lists ${s.file}, but ${why}; ${RESTART}`);
    };
    if (s.file !== `shard-${i}.safetensors`) damaged(`it is entry ${i}`);
    if (!lstatOrNull(file)) damaged("it is missing");
    const { fd, size } = openPrivate(file);
    fs.closeSync(fd);
    if (size !== s.file_bytes) damaged(`it has ${size} bytes, not ${s.file_bytes}`);
    const names = [...SafetensorsFile.open(file).tensors.keys()];
    if (names.join("\n") !== s.tensors.join("\n")) damaged("its tensors are not those recorded");
  }

  /** Record the finished shards (after the newest one is durable). */
  record(shards: readonly FinishedShard[]): void {
    const state: ShardState = { shards: [...shards] };
    writeAtomic(path.join(this.dir, SHARD_STATE), [Buffer.from(JSON.stringify(state))]);
  }

  /** Whether finished shards are recorded (by this run or an earlier one): a rerun resumes after them. */
  get hasFinishedShards(): boolean {
    return lstatOrNull(path.join(this.dir, SHARD_STATE)) !== null;
  }

  remove(): void {
    removeWorkFolder(this.dir);
  }
}

import fs from "node:fs";
import path from "node:path";
import { IoError, UsageError, asUsageError } from "../errors.js";
import { entryExists, isInside, readRegularFile } from "../io/files.js";
import { parseJsonObject } from "../io/json.js";

/** The report every moecal output holds; `--overwrite` replaces only folders that have one. */
export const OUTPUT_MARKER = "moecal.json";
const MAX_MARKER_BYTES = 64 * 1024 * 1024;

/** Temporary folders being written now and the locks held for them; released by `releaseActiveOutputs` (signal handlers). */
const activeDirs = new Set<string>();
const activeLocks = new Set<string>();

/** Outputs this process has put in place (a signal arriving after that must not say "no output was written"). */
const committed: string[] = [];

export function committedOutputs(): readonly string[] {
  return committed;
}

export function releaseActiveOutputs(): void {
  for (const d of activeDirs) fs.rmSync(d, { recursive: true, force: true });
  for (const l of activeLocks) fs.rmSync(l, { force: true });
  activeDirs.clear();
  activeLocks.clear();
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The pid in a `.<base>.<kind>-<pid>...` sibling's name, when that process is gone. */
function deadOwner(name: string, prefix: string): boolean {
  const pid = Number(name.slice(prefix.length).split("-")[0]);
  return Number.isInteger(pid) && pid > 0 && pid !== process.pid && !alive(pid);
}

/** `p` with every symlink on its existing part resolved (the rest appended as it is). */
function realpathLoose(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  let cur = abs;
  for (;;) {
    try {
      return path.join(fs.realpathSync(cur), ...rest.reverse());
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return abs;
      rest.push(path.basename(cur));
      cur = parent;
    }
  }
}

export interface NamedInput {
  /** what the user named it with ("model", "dataset", "reference model") */
  what: string;
  path: string;
}

/**
 * Refuse an output path that would put an input at risk: the current or root folder (or one
 * containing the current folder), a path equal to an input, one containing an input, or one
 * inside an input (symlinks on the way resolved), and a symlink in the output's place.
 */
export function assertSafeOutput(output: string, inputs: readonly NamedInput[], kind: "folder" | "file" = "folder"): string {
  const target = path.resolve(output);
  const real = realpathLoose(target);
  const cwd = realpathLoose(process.cwd());
  if (real === path.parse(real).root)
    throw new UsageError(`output ${JSON.stringify(output)} is the root folder; name a new folder for the output`);
  if (isInside(cwd, real))
    throw new UsageError(`output ${JSON.stringify(output)} is the current folder or contains it; name a new folder for the output`);
  for (const i of inputs) {
    const inp = realpathLoose(i.path);
    if (inp === real) throw new UsageError(`output ${JSON.stringify(output)} is the ${i.what} ${i.path}; inputs are never overwritten`);
    if (isInside(inp, real))
      throw new UsageError(`output ${JSON.stringify(output)} contains the ${i.what} ${i.path}; inputs are never overwritten`);
    if (isInside(real, inp))
      throw new UsageError(`output ${JSON.stringify(output)} lies inside the ${i.what} ${i.path}; moecal writes nothing into its inputs`);
  }
  let st: fs.Stats | null = null;
  try {
    st = fs.lstatSync(target);
  } catch {
    // does not exist yet
  }
  if (st?.isSymbolicLink()) throw new UsageError(`output ${target} is a symlink; moecal neither writes through nor replaces symlinks`);
  if (st && kind === "folder" && !st.isDirectory()) throw new UsageError(`output ${target} exists and is not a folder`);
  if (st && kind === "file" && !st.isFile()) throw new UsageError(`output ${target} exists and is not a regular file`);
  return target;
}

/** Whether `dir` is an output moecal wrote (it holds a moecal.json report naming a moecal version). */
function isMoecalOutput(dir: string): boolean {
  try {
    const j = parseJsonObject(
      readRegularFile(path.join(dir, OUTPUT_MARKER), MAX_MARKER_BYTES, asUsageError).toString("utf8"),
      OUTPUT_MARKER,
    );
    return typeof j.moecal_version === "string";
  } catch {
    return false;
  }
}

export interface OutputFolderOptions {
  overwrite?: boolean;
  /** inputs the output must never equal, contain or lie inside */
  inputs?: readonly NamedInput[];
  warn?: (message: string) => void;
}

/**
 * An output folder written atomically: everything goes to a hidden temporary sibling, renamed
 * into place by `commit`. A lock file beside it (`.<name>.moecal-lock`, holding the pid) keeps a
 * second run from writing the same output while this one lives. An existing non-empty target is
 * refused unless `overwrite`, and even then only when it is a previous moecal output. The old
 * output is moved aside only once the new one is complete; if the process dies between that
 * move and the rename of the new one (two renames apart), the next run to that output puts the
 * old one back.
 */
export class OutputFolder {
  readonly target: string;
  readonly tmp: string;
  private readonly lock: string;
  private done = false;

  constructor(target: string, opts: OutputFolderOptions = {}) {
    this.target = assertSafeOutput(target, opts.inputs ?? []);
    const parent = path.dirname(this.target);
    const base = path.basename(this.target);
    try {
      fs.mkdirSync(parent, { recursive: true });
    } catch (cause) {
      throw new IoError(`cannot create the folder ${parent} for ${this.target} (${(cause as Error).message})`, { cause });
    }
    this.lock = acquireLock(path.join(parent, `.${base}.moecal-lock`), this.target);
    try {
      recoverInterruptedCommit(parent, base, opts.warn);
      if (isNonEmptyDir(this.target) && !opts.overwrite) {
        throw new UsageError(`output ${this.target} exists and is not empty (use --overwrite to replace it)`);
      }
      if (isNonEmptyDir(this.target) && !isMoecalOutput(this.target)) {
        throw new UsageError(
          `output ${this.target} exists and is not a moecal output (it has no ${OUTPUT_MARKER}); --overwrite replaces only moecal's own outputs`,
        );
      }
      for (const f of fs.readdirSync(parent))
        if (f.startsWith(`.${base}.tmp-`) && deadOwner(f, `.${base}.tmp-`))
          fs.rmSync(path.join(parent, f), { recursive: true, force: true });
      this.tmp = fs.mkdtempSync(path.join(parent, `.${base}.tmp-${process.pid}-`));
    } catch (cause) {
      this.releaseLock();
      if (cause instanceof UsageError) throw cause;
      throw new IoError(`cannot create a temporary folder beside ${this.target} (${(cause as Error).message})`, { cause });
    }
    activeDirs.add(this.tmp);
  }

  file(name: string): string {
    return path.join(this.tmp, name);
  }

  writeFile(name: string, data: string | Uint8Array): void {
    try {
      fs.writeFileSync(this.file(name), data);
    } catch (cause) {
      throw new IoError(`${path.join(this.target, name)}: write failed (${(cause as Error).message})`, { cause });
    }
  }

  /** Copy a regular file in, never with wider permissions than the source (and never executable). */
  copyFrom(src: string, name = path.basename(src)): void {
    try {
      const mode = fs.statSync(src).mode & 0o644;
      fs.mkdirSync(path.dirname(this.file(name)), { recursive: true });
      fs.copyFileSync(src, this.file(name));
      fs.chmodSync(this.file(name), mode);
    } catch (cause) {
      throw new IoError(`copying ${src} failed (${(cause as Error).message})`, { cause });
    }
  }

  /** Rename the finished folder into place (moving an old one aside only now), then release the lock. */
  commit(): string {
    if (this.done) throw new UsageError("output folder already committed or aborted");
    const parent = path.dirname(this.target);
    const old = path.join(parent, `.${path.basename(this.target)}.moecal-old-${process.pid}`);
    try {
      fs.chmodSync(this.tmp, 0o755);
      if (fs.existsSync(this.target)) fs.renameSync(this.target, old);
      fs.renameSync(this.tmp, this.target);
    } catch (cause) {
      throw new IoError(`cannot move the finished output into place at ${this.target} (${(cause as Error).message})`, { cause });
    }
    activeDirs.delete(this.tmp);
    this.done = true;
    committed.push(this.target);
    fs.rmSync(old, { recursive: true, force: true });
    this.releaseLock();
    return this.target;
  }

  abort(): void {
    if (this.done) return;
    fs.rmSync(this.tmp, { recursive: true, force: true });
    activeDirs.delete(this.tmp);
    this.done = true;
    this.releaseLock();
  }

  private releaseLock(): void {
    fs.rmSync(this.lock, { force: true });
    activeLocks.delete(this.lock);
  }
}

function isNonEmptyDir(p: string): boolean {
  try {
    return fs.readdirSync(p).length > 0;
  } catch {
    return false; // does not exist
  }
}

/** Take the output's lock, or refuse while another live run (or this process) holds it. */
function acquireLock(lock: string, target: string): string {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: "wx", mode: 0o644 });
      activeLocks.add(lock);
      return lock;
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== "EEXIST")
        throw new IoError(`cannot create the lock ${lock} (${(cause as Error).message})`, { cause });
    }
    if (!entryExists(lock)) continue; // removed between our attempts: try again
    const pid = Number(readRegularFile(lock, 64, asUsageError, "lock file").toString("utf8").trim());
    if (activeLocks.has(lock) || (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid))) {
      throw new UsageError(
        `output ${target} is being written by another moecal run (pid ${pid}, lock ${lock}); wait for it to finish or stop it`,
      );
    }
    fs.rmSync(lock, { force: true }); // left by a run that is gone
  }
  throw new UsageError(`output ${target}: could not take the lock ${lock}`);
}

/** An old output moved aside by a run that died before renaming its new output in is put back; one whose new output landed is removed. */
function recoverInterruptedCommit(parent: string, base: string, warn?: (m: string) => void): void {
  const prefix = `.${base}.moecal-old-`;
  for (const f of fs.readdirSync(parent)) {
    if (!f.startsWith(prefix) || !deadOwner(f, prefix)) continue;
    const old = path.join(parent, f);
    const target = path.join(parent, base);
    if (fs.existsSync(target)) fs.rmSync(old, { recursive: true, force: true });
    else {
      fs.renameSync(old, target);
      warn?.(`restored the previous output ${target}, left aside by a run that stopped while replacing it`);
    }
  }
}

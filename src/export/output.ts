import fs from "node:fs";
import path from "node:path";
import { MoecalError, UsageError } from "../errors.js";

/** Temporary folders being written now; removed by `removeActiveTempDirs` (signal handlers). */
const active = new Set<string>();

export function removeActiveTempDirs(): void {
  for (const d of active) fs.rmSync(d, { recursive: true, force: true });
  active.clear();
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Temporary folders left by a killed run (their process is gone) are removed before a new run. */
function removeStaleTempDirs(parent: string, base: string): void {
  const prefix = `.${base}.tmp-`;
  for (const f of fs.readdirSync(parent)) {
    if (!f.startsWith(prefix)) continue;
    const pid = Number(f.slice(prefix.length).split("-")[0]);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !alive(pid)) fs.rmSync(path.join(parent, f), { recursive: true, force: true });
  }
}

function isNonEmptyDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory() ? fs.readdirSync(p).length > 0 : true;
  } catch {
    return false; // does not exist
  }
}

/**
 * An output folder written atomically: everything goes to a hidden temporary sibling, renamed
 * into place by `commit`. An existing non-empty target is refused unless `overwrite`.
 */
export class OutputFolder {
  readonly target: string;
  readonly tmp: string;
  private done = false;

  constructor(target: string, opts: { overwrite?: boolean } = {}) {
    this.target = path.resolve(target);
    if (isNonEmptyDir(this.target) && !opts.overwrite) {
      throw new UsageError(`output ${this.target} exists and is not empty (use --overwrite to replace it)`);
    }
    const parent = path.dirname(this.target);
    try {
      fs.mkdirSync(parent, { recursive: true });
      removeStaleTempDirs(parent, path.basename(this.target));
      this.tmp = fs.mkdtempSync(path.join(parent, `.${path.basename(this.target)}.tmp-${process.pid}-`));
    } catch (cause) {
      throw new MoecalError("E_IO", `cannot create a temporary folder beside ${this.target} (${(cause as Error).message})`, { cause });
    }
    active.add(this.tmp);
  }

  file(name: string): string {
    return path.join(this.tmp, name);
  }

  writeFile(name: string, data: string | Uint8Array): void {
    try {
      fs.writeFileSync(this.file(name), data);
    } catch (cause) {
      throw new MoecalError("E_IO", `${path.join(this.target, name)}: write failed (${(cause as Error).message})`, { cause });
    }
  }

  copyFrom(src: string, name = path.basename(src)): void {
    try {
      fs.mkdirSync(path.dirname(this.file(name)), { recursive: true });
      fs.copyFileSync(src, this.file(name));
      fs.chmodSync(this.file(name), 0o644);
    } catch (cause) {
      throw new MoecalError("E_IO", `copying ${src} failed (${(cause as Error).message})`, { cause });
    }
  }

  /** Rename the finished folder into place (replacing an old one only now). */
  commit(): string {
    if (this.done) throw new UsageError("output folder already committed or aborted");
    let old: string | null = null;
    if (fs.existsSync(this.target)) {
      old = `${this.tmp}.old`;
      fs.renameSync(this.target, old);
    }
    fs.chmodSync(this.tmp, 0o755);
    fs.renameSync(this.tmp, this.target);
    active.delete(this.tmp);
    this.done = true;
    if (old) fs.rmSync(old, { recursive: true, force: true });
    return this.target;
  }

  abort(): void {
    if (this.done) return;
    fs.rmSync(this.tmp, { recursive: true, force: true });
    active.delete(this.tmp);
    this.done = true;
  }
}

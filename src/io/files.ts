/**
 * Reading files a user names or a model folder holds: only regular files, their size checked
 * against a named limit before a byte is read, opened so that a FIFO or device can never block
 * the process (and with it the signal handlers), and confined to the model folder.
 */
import fs from "node:fs";
import path from "node:path";
import type { ErrorFactory } from "../errors.js";

function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return "a folder";
  if (st.isFIFO()) return "a FIFO (named pipe)";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice() || st.isBlockDevice()) return "a device";
  return "not a regular file";
}

/** Why `file` cannot be opened, in words ("not found", "a dangling symlink", the system's reason). */
function openFailure(file: string, cause: unknown): string {
  const code = (cause as NodeJS.ErrnoException).code;
  if (code === "ENOENT") {
    try {
      if (fs.lstatSync(file).isSymbolicLink()) return `a dangling symlink (to ${fs.readlinkSync(file)})`;
    } catch {
      // lstat failing too means the path is simply absent
    }
    return "not found";
  }
  if (code === "ENXIO") return "a socket or device, not a regular file";
  return `cannot open (${(cause as Error).message})`;
}

/** Whether something (a file, a folder, even a dangling symlink) stands at `p`. */
export function entryExists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Open `file` for reading without blocking (a FIFO with no writer would block the process
 * forever) and check that it is a regular file of at most `limit` bytes. Returns the open
 * descriptor and the size; the caller closes it.
 */
export function openRegular(file: string, limit: number, err: ErrorFactory, what = "file"): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (cause) {
    throw err(`${what} ${file}: ${openFailure(file, cause)}`, { cause });
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw err(`${what} ${file}: is ${kindOf(st)}, expected a regular file`);
    if (st.size > limit) throw err(`${what} ${file}: ${st.size} bytes exceeds the limit of ${limit} bytes`);
    return { fd, size: st.size };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Check that `file` is a regular file of at most `limit` bytes (without reading it); returns its size. */
export function checkRegular(file: string, limit: number, err: ErrorFactory, what = "file"): number {
  const { fd, size } = openRegular(file, limit, err, what);
  fs.closeSync(fd);
  return size;
}

/** Read `[position, position + length)` of an open file fully, or fail naming it. */
export function readAt(fd: number, file: string, bytes: Uint8Array, position: number, err: ErrorFactory): void {
  let done = 0;
  while (done < bytes.length) {
    let n: number;
    try {
      n = fs.readSync(fd, bytes, done, bytes.length - done, position + done);
    } catch (cause) {
      throw err(`${file}: read failed (${(cause as Error).message})`, { cause });
    }
    if (n === 0) throw err(`${file}: ended after ${position + done} bytes, inside data it declares`);
    done += n;
  }
}

/** The whole of a regular file of at most `limit` bytes. */
export function readRegularFile(file: string, limit: number, err: ErrorFactory, what = "file"): Buffer {
  const { fd, size } = openRegular(file, limit, err, what);
  try {
    const buf = Buffer.alloc(size);
    readAt(fd, file, buf, 0, err);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The roots a model folder's symlinks may lead into: the folder itself and, for a Hugging Face
 * hub cache snapshot (`models--org--name/snapshots/<rev>`, whose files are links into the
 * repository's `blobs/`), that blobs folder.
 */
function modelRoots(dir: string, err: ErrorFactory): string[] {
  let root: string;
  try {
    root = fs.realpathSync(dir);
  } catch (cause) {
    throw err(`model folder ${dir}: ${openFailure(dir, cause)}`, { cause });
  }
  if (!fs.statSync(root).isDirectory()) throw err(`model folder ${dir}: is not a folder`);
  const snapshots = path.dirname(root);
  const repo = path.dirname(snapshots);
  const roots = [root];
  if (path.basename(snapshots) === "snapshots" && path.basename(repo).startsWith("models--")) roots.push(path.join(repo, "blobs"));
  return roots;
}

/** Whether path `p` is `root` or lies below it (both absolute, symlinks already resolved). */
export function isInside(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/**
 * `dir/rel` as a real path, refused (naming it) when it or a link on its way leads outside the
 * model folder, when it dangles, or when it is absent.
 */
export function confinedFile(dir: string, rel: string, err: ErrorFactory): string {
  const p = path.join(dir, rel);
  let real: string;
  try {
    real = fs.realpathSync(p);
  } catch (cause) {
    throw err(`${p}: ${openFailure(p, cause)}`, { cause });
  }
  if (!modelRoots(dir, err).some((r) => isInside(real, r))) {
    throw err(
      `${p}: is a symlink leading outside the model folder (to ${real}); refused, so that nothing outside the named folders is read or copied`,
    );
  }
  return real;
}

import fs from "node:fs";
import path from "node:path";
import { IoError, MoecalError } from "../errors.js";

/** Write a file through a temporary sibling renamed into place, so readers never see half of it. */
export function writeFileAtomic(file: string, write: (tmp: string) => void): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    write(tmp);
    fs.renameSync(tmp, file);
  } catch (cause) {
    fs.rmSync(tmp, { force: true });
    if (cause instanceof MoecalError) throw cause;
    throw new IoError(`${file}: cannot write (${(cause as Error).message})`, { cause });
  }
}

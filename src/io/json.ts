import fs from "node:fs";
import { CheckpointFormatError } from "../errors.js";

/** A JSON object from a file of at most `limit` bytes; a missing, oversized or malformed file is a CheckpointFormatError naming it. */
export function readJsonObject(file: string, limit: number): Record<string, unknown> {
  if (!fs.existsSync(file)) throw new CheckpointFormatError(`${file}: not found`);
  const size = fs.statSync(file).size;
  if (size > limit) throw new CheckpointFormatError(`${file}: ${size} bytes exceeds the limit of ${limit}`);
  try {
    const v: unknown = JSON.parse(fs.readFileSync(file, "utf8"));
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Record<string, unknown>;
  } catch (cause) {
    throw new CheckpointFormatError(`${file}: invalid JSON (${(cause as Error).message})`, { cause });
  }
}

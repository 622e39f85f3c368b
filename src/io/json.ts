import path from "node:path";
import { ConfigError, type ErrorFactory, asFormatError } from "../errors.js";
import { confinedFile, readRegularFile } from "./files.js";

/** Deepest nesting of arrays and objects accepted in a JSON file we read. */
export const MAX_JSON_DEPTH = 64;

/** Nesting depth of a parsed JSON value (iterative, so any depth is measured without recursion). */
function jsonDepth(v: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length) {
    const [x, d] = stack.pop() as [unknown, number];
    if (typeof x !== "object" || x === null) continue;
    max = Math.max(max, d + 1);
    if (max > MAX_JSON_DEPTH) return max;
    for (const c of Array.isArray(x) ? x : Object.values(x)) stack.push([c, d + 1]);
  }
  return max;
}

/** Parse JSON text that must be an object nested at most MAX_JSON_DEPTH deep. */
export function parseJsonObject(text: string, where: string, err: ErrorFactory = asFormatError): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch (cause) {
    throw err(`${where}: invalid JSON (${(cause as Error).message})`, { cause });
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw err(`${where}: invalid JSON (not a JSON object)`);
  if (jsonDepth(v) > MAX_JSON_DEPTH) throw err(`${where}: nested deeper than the limit of ${MAX_JSON_DEPTH} levels`);
  return v as Record<string, unknown>;
}

/** A JSON object from a regular file of at most `limit` bytes; anything else is an error naming the file. */
export function readJsonObject(file: string, limit: number, err: ErrorFactory = asFormatError): Record<string, unknown> {
  return parseJsonObject(readRegularFile(file, limit, err).toString("utf8"), file, err);
}

/** Largest config.json we read. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/** `<dir>/config.json` as a JSON object: the one reader of model configs (inside the folder, size-limited, nesting-bounded). */
export function readConfigJson(dir: string): { file: string; json: Record<string, unknown> } {
  const err: ErrorFactory = (m, o) => new ConfigError(m, o);
  return { file: path.join(dir, "config.json"), json: readJsonObject(confinedFile(dir, "config.json", err), MAX_CONFIG_BYTES, err) };
}

/**
 * The files of an MoE layer run in expert groups (expert-groups.ts), besides the streamed calls
 * (moe-stream.ts): each group's result, written once with its tensors and named by the group (what
 * it quantized, with what loss, what fell back, which rows its experts saw), and the layer's state,
 * saved after each group (the group size it started with and the groups done). A rerun of the same
 * command resumes after the last group saved, with the same group size.
 */
import { CheckpointFormatError } from "../errors.js";
import type { Fallback } from "./quantize-layer.js";
import type { groupFiles } from "./moe-stream.js";
import { RESTART, lstatOrNull, readPrivateText, writeAtomic } from "./work-folder.js";

export interface GroupState {
  layer: number;
  group_size: number;
  /** groups finished (their tensors and result written, their routed outputs added) */
  done: number;
}

/** What one group of experts [first, end) did. */
export interface GroupResult {
  first: number;
  end: number;
  /** each quantized expert Linear: its expert, GPTQ loss and output tensors (in the group's file) */
  results: { name: string; expert: number; loss: number; tensors: string[] }[];
  fallbacks: Fallback[];
  all_token_fallbacks: string[];
  /** rows each of its experts' gate projection saw (coverage), expert `first` first */
  seen: number[];
  /** the largest input magnitude of its static-activation Linears that saw rows (0: none) */
  absmax: number;
}

type Files = ReturnType<typeof groupFiles>;

export function writeGroupState(files: Files, s: GroupState): void {
  writeAtomic(files.state, [Buffer.from(JSON.stringify(s))]);
}

export function writeGroupResult(files: Files, g: number, r: GroupResult, tag?: string): void {
  writeAtomic(files.result(g), [Buffer.from(JSON.stringify(r))], tag);
}

/** A JSON object moecal wrote in the work folder, read without following links. */
function readJson(file: string, what: string): Record<string, unknown> {
  const text = readPrivateText(file, what);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (cause) {
    throw new CheckpointFormatError(`${file}: not a ${what} moecal wrote (${(cause as Error).message}); ${RESTART}`, { cause });
  }
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw new CheckpointFormatError(`${file}: not a ${what} moecal wrote (not a JSON object); ${RESTART}`);
  return v as Record<string, unknown>;
}

const isInt = (v: unknown, min: number): v is number => Number.isInteger(v) && (v as number) >= min;

/** The first file a state of `done` groups needs that is missing or not a regular file, and why. */
function absentFile(files: Files, done: number, last: boolean): string | null {
  const needed = [
    ...Array.from({ length: done }, (_, g) => [files.tensors(g), files.result(g)]).flat(),
    ...(done > 0 && !last ? [files.routed(done)] : []),
  ];
  for (const f of needed) {
    const st = lstatOrNull(f);
    if (!st) return `${f} is missing`;
    if (!st.isFile()) return `${f} is not a regular file (moecal never follows links in its work folder)`;
  }
  return null;
}

/** The saved state of layer `i`'s groups, checked against the files beside it (routed sums unless `last`); null when there is none. */
export function readGroupState(files: Files, i: number, E: number, last: boolean): GroupState | null {
  if (!lstatOrNull(files.state)) return null;
  const s = readJson(files.state, "group state");
  let why: string | null = null;
  if (s.layer !== i) why = `it is for layer ${String(s.layer)}, not ${i}`;
  else if (!isInt(s.group_size, 1) || s.group_size > E) why = `group_size ${String(s.group_size)} is not 1..${E}`;
  else if (!isInt(s.done, 0) || s.done > Math.ceil(E / s.group_size)) why = `done ${String(s.done)} is out of range`;
  else why = absentFile(files, s.done, last);
  if (why) throw new CheckpointFormatError(`the work folder is damaged: ${files.state}: ${why}; ${RESTART}`);
  return s as unknown as GroupState;
}

/** Group `g`'s result, checked for the experts [first, end) of `E`. */
export function readGroupResult(files: Files, g: number, first: number, end: number): GroupResult {
  const file = files.result(g);
  const r = readJson(file, "group result");
  const ok =
    r.first === first &&
    r.end === end &&
    Array.isArray(r.seen) &&
    r.seen.length === end - first &&
    r.seen.every((n) => isInt(n, 0)) &&
    Array.isArray(r.results) &&
    r.results.every(
      (x: Partial<GroupResult["results"][number]>) =>
        typeof x?.name === "string" &&
        isInt(x.expert, first) &&
        (x.expert as number) < end &&
        typeof x.loss === "number" &&
        Array.isArray(x.tensors),
    ) &&
    Array.isArray(r.fallbacks) &&
    Array.isArray(r.all_token_fallbacks) &&
    typeof r.absmax === "number" &&
    r.absmax >= 0;
  if (!ok)
    throw new CheckpointFormatError(`the work folder is damaged: ${file}: not the result of experts ${first}-${end - 1}; ${RESTART}`);
  return r as unknown as GroupResult;
}

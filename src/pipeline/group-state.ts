/**
 * The state of an MoE layer run in expert groups (expert-groups.ts), saved after each group: the
 * group size it started with, the groups done, and what they reported. A rerun of the same command
 * resumes after the last group saved, with the same group size.
 */
import fs from "node:fs";
import { CheckpointFormatError } from "../errors.js";
import type { Fallback } from "./quantize-layer.js";
import type { groupFiles } from "./moe-stream.js";
import { RESTART, lstatOrNull, openPrivate, writeAtomic } from "./work-folder.js";

export interface GroupState {
  layer: number;
  group_size: number;
  /** groups finished (their tensors written, their routed outputs added) */
  done: number;
  /** rows each expert's gate projection saw (coverage) */
  seen: number[];
  /** each quantized expert Linear: its expert, GPTQ loss and output tensors (in its group's file) */
  results: { name: string; expert: number; loss: number; tensors: string[] }[];
  fallbacks: Fallback[];
  all_token_fallbacks: string[];
  /** the largest input magnitude of the groups' static-activation Linears that saw rows (0: none) */
  absmax: number;
}

type Files = ReturnType<typeof groupFiles>;

/** Largest group state read back (a result and its tensor names per expert Linear). */
const MAX_BYTES = 256 * 1024 ** 2;

export function writeGroupState(files: Files, s: GroupState): void {
  writeAtomic(files.state, [Buffer.from(JSON.stringify(s))]);
}

const isInt = (v: unknown, min: number): v is number => Number.isInteger(v) && (v as number) >= min;

/** What is wrong with a group state read back for layer `i` of `E` experts (null: nothing). */
function problem(s: Partial<GroupState>, i: number, E: number): string | null {
  if (s.layer !== i) return `it is for layer ${String(s.layer)}, not ${i}`;
  if (!isInt(s.group_size, 1) || s.group_size > E) return `group_size ${String(s.group_size)} is not 1..${E}`;
  if (!isInt(s.done, 0) || s.done > Math.ceil(E / s.group_size)) return `done ${String(s.done)} is out of range`;
  if (!Array.isArray(s.seen) || s.seen.length !== E || !s.seen.every((n) => isInt(n, 0))) return "seen is not a count per expert";
  if (
    !Array.isArray(s.results) ||
    !s.results.every(
      (r) => typeof r?.name === "string" && isInt(r.expert, 0) && r.expert < E && typeof r.loss === "number" && Array.isArray(r.tensors),
    )
  )
    return "results are malformed";
  if (!Array.isArray(s.fallbacks) || !Array.isArray(s.all_token_fallbacks)) return "fallbacks are malformed";
  if (typeof s.absmax !== "number" || !(s.absmax >= 0)) return "absmax is not a non-negative number";
  return null;
}

/** The first file a state of `done` groups needs that is missing or not a regular file, and why. */
function absentFile(files: Files, done: number, last: boolean): string | null {
  const needed = [...Array.from({ length: done }, (_, g) => files.tensors(g)), ...(done > 0 && !last ? [files.routed(done)] : [])];
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
  const { fd, size } = openPrivate(files.state);
  let s: unknown;
  try {
    if (size > MAX_BYTES) throw new Error(`${size} bytes, more than a group state holds`);
    const buf = Buffer.alloc(size);
    fs.readSync(fd, buf, 0, size, 0);
    s = JSON.parse(buf.toString("utf8"));
  } catch (cause) {
    throw new CheckpointFormatError(`${files.state}: not a group state moecal wrote (${(cause as Error).message}); ${RESTART}`, { cause });
  } finally {
    fs.closeSync(fd);
  }
  const state = typeof s === "object" && s !== null && !Array.isArray(s) ? (s as GroupState) : null;
  const damage = state ? (problem(state, i, E) ?? absentFile(files, state.done, last)) : "not a JSON object";
  if (damage) throw new CheckpointFormatError(`the work folder is damaged: ${files.state}: ${damage}; ${RESTART}`);
  return state;
}

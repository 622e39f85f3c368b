/**
 * A oneshot run for the resume tests, in its own process: `node resume-child.js OUTPUT [LAYER STAGE] [--num-samples N] [--model DIR] [--restart]`
 * runs the bundled model's (or DIR's) oneshot (GPTQ, 4 samples x 32 tokens) and, given LAYER and STAGE,
 * kills itself with SIGKILL at that point of that layer's checkpoint. Prints each progress event as a JSON line.
 * `--quick` runs what the bad-input cases' `quick` arguments run instead (RTN, 1 bundled sample of 8 tokens);
 * `--recipe FILE` runs that recipe file (its schemes and methods) instead of W4A16 GPTQ;
 * `--expert-group-size N` runs MoE layers N experts at a time, and `--kill-at-group K` makes STAGE
 * (a group stage) kill at the K-th group of LAYER (counted from 0).
 */
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { TEXT } from "../helpers.js";

const [output, layer, stage] = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const quick = process.argv.includes("--quick");
const groupSize = flag("--expert-group-size");
const killAtGroup = Number(flag("--kill-at-group") ?? 0);
let groupStops = 0;
await oneshot({
  output,
  model: flag("--model"),
  numSamples: quick ? 1 : Number(flag("--num-samples") ?? 4),
  maxSeqLength: quick ? 8 : 32,
  dataset: quick ? undefined : path.join(TEXT, "eval-json.jsonl"),
  ...(flag("--recipe") ? { recipe: flag("--recipe") } : { method: quick ? ("rtn" as const) : ("gptq" as const) }),
  calibrate: true,
  restart: process.argv.includes("--restart"),
  ...(groupSize ? { expertGroupSize: Number(groupSize) } : {}),
  warn: () => undefined,
  onProgress: (e) => {
    if (e.kind === "resume" || e.kind === "layer-done") process.stdout.write(`${JSON.stringify({ kind: e.kind, layer: e.layer })}\n`);
    if (e.kind === "resume-groups") process.stdout.write(`${JSON.stringify(e)}\n`);
  },
  onCheckpoint: (s, i) => {
    if (String(i) !== layer || s !== stage) return;
    if (s.startsWith("group") && groupStops++ < killAtGroup) return;
    process.kill(process.pid, "SIGKILL");
  },
});

/**
 * A plan as the user reads it (a line, a table) and as oneshot checks it against the memory and
 * disk it has, naming what is too big and which option shrinks it.
 */
import fs from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";
import type { LayerPlan, Plan } from "./plan-types.js";

/** Free bytes on the file system holding `dir` (or its nearest existing parent). */
export function freeDiskBytes(dir: string): number {
  let d = path.resolve(dir);
  while (!fs.existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
  const s = fs.statfsSync(d);
  return s.bavail * s.bsize;
}

const GB = 1024 ** 3;
/** Bytes as a plan prints them (MiB or GiB). */
export const size = (b: number): string => (b >= GB ? `${(b / GB).toFixed(2)} GiB` : `${(b / 1024 ** 2).toFixed(1)} MiB`);
/** Seconds as a plan prints them (s, min or h). */
export const time = (s: number): string =>
  s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`;

/** The plan in one line (oneshot prints it at start). */
export function planSummary(p: Plan): string {
  const df = p.data_free;
  if (df)
    return `plan (data-free, ${df.workers} worker thread(s)): peak memory ${size(p.peak_memory_bytes)} (a job's weights per worker and one ahead: ${size((df.workers + 1) * df.job_bytes)}; flat in the model's size), disk ${size(p.disk_bytes)} (output ${size(p.disk.output)}, shard assembly ${size(p.disk.shard_assembly)}), about ${time(p.seconds)} (${size(df.source_bytes)} of source weights, ${p.layers.length} layers)`;
  const grouped = p.layers.filter((l) => l.expert_groups);
  const groups = grouped.length
    ? `, ${grouped.length} MoE layer(s) in groups of ${[...new Set(grouped.map((l) => l.expert_groups?.size))].join("/")} experts (whole: ${size(Math.max(...grouped.map((l) => l.expert_groups?.whole_peak_memory_bytes ?? 0)))})`
    : "";
  return `plan: peak memory ${size(p.peak_memory_bytes)}${groups}, disk ${size(p.disk_bytes)} (output ${size(p.disk.output)}, resume state ${size(p.disk.resume_state)}, shard assembly ${size(p.disk.shard_assembly)}), about ${time(p.seconds)} (${p.layers.length} layers, ${p.tokens} tokens, engine ${p.gemm_gflops.toFixed(0)} GFLOP/s)`;
}

/** The plan per layer and in total, as text. */
export function formatPlan(p: Plan): string {
  if (p.data_free) {
    const rows = p.layers.map(
      (l) =>
        `${String(l.layer).padStart(5)}  ${(l.moe ? "moe" : "dense").padEnd(5)}  ${size(l.read_bytes).padStart(9)}  ${size(l.write_bytes).padStart(9)}  ${size(l.peak_memory_bytes).padStart(11)}  ${time(l.seconds)}`,
    );
    return [
      `${p.model}: ${p.scheme} ${p.method}, data-free (no calibration data: each weight quantized from itself)`,
      "layer  kind   read       write      peak memory  time",
      ...rows,
      planSummary(p),
    ].join("\n");
  }
  const lines = [
    `${p.model}: ${p.scheme} ${p.method}, ${p.samples} samples / ${p.tokens} tokens`,
    "layer  kind     read       write      peak memory  (hidden states, Hessians, GPTQ)   GFLOP calib / propagate / GPTQ   time",
  ];
  if (p.layers.some((l) => l.expert_groups))
    lines.splice(1, 0, "(moe/N: the layer's routed experts run N at a time, to fit in --max-memory or as --expert-group-size asks)");
  for (const l of p.layers) {
    const m = l.memory;
    const g = (f: number): string => (f / 1e9).toFixed(1);
    lines.push(
      `${String(l.layer).padStart(5)}  ${(l.moe ? (l.expert_groups ? `moe/${l.expert_groups.size}` : "moe") : "dense").padEnd(7)}  ${size(l.read_bytes).padStart(9)}  ${size(l.write_bytes).padStart(9)}  ${size(l.peak_memory_bytes).padStart(11)}  (${size(m.hidden_states)}, ${size(m.hessians)}, ${size(m.gptq + m.workers)})  ${g(l.flops.calibrate)} / ${g(l.flops.propagate)} / ${g(l.flops.gptq)}  ${time(l.seconds)}`,
    );
  }
  lines.push(planSummary(p));
  return lines.join("\n");
}

const SHRINKS: Record<keyof LayerPlan["memory"], string> = {
  outputs: "no option (one layer's quantized tensors must fit in memory)",
  hidden_states: "fewer --num-samples or a shorter --max-seq-length",
  hessians: "--method rtn (no Hessians), or a smaller --expert-group-size in an MoE layer",
  gptq: "fewer GPTQ worker threads (MOECAL_GPTQ_WORKERS) or --method rtn",
  workers: "fewer GPTQ worker threads (MOECAL_GPTQ_WORKERS)",
  activations: "a shorter --max-seq-length",
  parameters: "a smaller --expert-group-size in an MoE layer (one layer's other weights must fit in memory)",
  retained: "no option (the previous layer's weights stay until the garbage collector frees them)",
};

/** Refuse a plan that does not fit: naming where it peaks, what is too big and which option shrinks it. */
export function checkPlan(p: Plan, limits: { maxMemory: number; freeDisk: number; output: string }): void {
  if (p.peak_memory_bytes > limits.maxMemory) {
    const steps: { where: string; peak: number; parts: [string, number, string][] }[] = [
      ...p.layers.map((l) => ({
        where: `at layer ${l.layer}`,
        peak: l.peak_memory_bytes,
        parts: Object.entries(l.memory).map(
          ([k, v]) => [k.replace("_", " "), v, SHRINKS[k as keyof LayerPlan["memory"]]] as [string, number, string],
        ),
      })),
      {
        where: "to embed the calibration samples",
        peak: p.baseline_bytes + p.phases.embed,
        parts: [["one sample's embeddings", p.phases.embed, "a shorter --max-seq-length"]],
      },
      {
        where: "to assemble the output",
        peak: p.baseline_bytes + p.phases.assemble,
        parts: [["one layer's quantized tensors read back, and copy buffers", p.phases.assemble, "no option"]],
      },
    ];
    const worst = steps.reduce((a, b) => (b.peak > a.peak ? b : a));
    const [part, bytes, shrinks] = worst.parts.reduce((a, b) => (b[1] > a[1] ? b : a));
    const needs = `the plan needs ${size(worst.peak)} of memory ${worst.where}, more than --max-memory ${size(limits.maxMemory)}`;
    if (bytes < p.baseline_bytes)
      throw new UsageError(
        `${needs}; most of it is the process itself (Node.js and onnxruntime, about ${size(p.baseline_bytes)}), which no option shrinks`,
      );
    throw new UsageError(`${needs}; the largest part is ${part} (${size(bytes)}): ${shrinks} shrinks it`);
  }
  if (p.disk_bytes > limits.freeDisk) {
    throw new UsageError(
      `the plan needs ${size(p.disk_bytes)} of disk (output ${size(p.disk.output)}, resume state ${size(p.disk.resume_state)}, shard assembly ${size(p.disk.shard_assembly)}), but the file system of ${limits.output} has ${size(limits.freeDisk)} free; free some space or choose another --output`,
    );
  }
}

/** Parse a size: bytes, or a number with K, M, G or T (powers of 1024). */
export function parseBytes(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$/i.exec(text.trim());
  if (!m) throw new UsageError(`"${text}" is not a size (bytes, or a number with K, M, G or T)`);
  const unit = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[(m[2] ?? "").toUpperCase() as "" | "K" | "M" | "G" | "T"];
  return Math.round(Number(m[1]) * unit);
}

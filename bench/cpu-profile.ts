/**
 * Where a thread's seconds go outside the engine, from V8's sampling profiles (`node --cpu-prof`):
 * each sample's own function (file and line), with onnxruntime's runs (the binding runs a session
 * synchronously on the calling thread), garbage collection and idle time (waiting for the GPTQ
 * workers, for I/O) as items of their own. `bench:profile` writes one profile per thread.
 */
import fs from "node:fs";
import path from "node:path";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** A thread's profile: seconds by item, largest first. */
export interface ThreadItems {
  file: string;
  seconds: number;
  items: [string, number][];
}

const ENGINE = "engine (onnxruntime session runs)";

function itemOf(frame: CallFrame): string {
  const { functionName: f, url } = frame;
  if (f === "(garbage collector)") return "garbage collection";
  if (f === "(idle)") return "idle (waiting for worker threads, I/O)";
  if (f === "(program)" || f === "(root)") return "V8 and native code outside a JavaScript function";
  const file = url.replace(/^file:\/\//, "").replace(/^.*\/dist\//, "");
  return `${f || "(anonymous)"} ${file ? `${path.basename(file)}:${frame.lineNumber + 1}` : "(native)"}`;
}

/** Seconds by item of one profile: a sample under an onnxruntime run counts as the engine's. */
export function threadItems(file: string): ThreadItems {
  const p = JSON.parse(fs.readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inEngine = new Map<number, boolean>();
  const engineOf = (id: number): boolean => {
    const known = inEngine.get(id);
    if (known !== undefined) return known;
    const n = byId.get(id);
    const up = parent.get(id);
    const v = (n?.callFrame.url.includes("onnxruntime-node") ?? false) || (up !== undefined && engineOf(up));
    inEngine.set(id, v);
    return v;
  };
  const seconds = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1e6;
    const n = byId.get(id);
    if (!n) return;
    const key = engineOf(id) ? ENGINE : itemOf(n.callFrame);
    seconds.set(key, (seconds.get(key) ?? 0) + dt);
    total += dt;
  });
  return { file: path.basename(file), seconds: total, items: [...seconds].sort((a, b) => b[1] - a[1]) };
}

/** Markdown: one table per thread, the items above `minSeconds`, the rest summed. */
export function itemsTable(t: ThreadItems, minSeconds: number): string[] {
  const shown = t.items.filter(([, s]) => s >= minSeconds);
  const rest = t.items.filter(([, s]) => s < minSeconds).reduce((a, [, s]) => a + s, 0);
  return [
    `${t.file}: ${t.seconds.toFixed(2)} s sampled`,
    "",
    "| item | seconds |",
    "|---|---:|",
    ...shown.map(([k, s]) => `| ${k} | ${s.toFixed(2)} |`),
    `| everything below ${minSeconds} s | ${rest.toFixed(2)} |`,
    "",
  ];
}

/**
 * One oneshot run for the plan-holds test, in its own process: `node plan-holds-child.js MODEL SCHEME OUTPUT [GROUP]`
 * (GPTQ, 4 samples x 32 tokens; MoE layers GROUP experts at a time when given). Where this process may create a memory cgroup (root, cgroup v1 or
 * v2), it moves itself into one and, once the plan is known, limits it to the plan + 10%: a run
 * over its plan is killed by the kernel. Prints {"plan": bytes, "peak": bytes, "limited": bool}.
 */
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { peakRssBytes } from "../../src/util/memory.js";

const [model, scheme, output, group] = process.argv.slice(2) as [string, string, string, string | undefined];

/** A memory cgroup of this process's own, with a setter for its limit, or null where none can be made. */
function ownCgroup(): ((bytes: number) => void) | null {
  const name = `moecal-plan-${process.pid}`;
  for (const [root, limitFile] of [
    ["/sys/fs/cgroup/memory", "memory.limit_in_bytes"],
    ["/sys/fs/cgroup", "memory.max"],
  ] as const) {
    const dir = path.join(root, name);
    try {
      fs.mkdirSync(dir);
    } catch {
      continue;
    }
    try {
      fs.writeFileSync(path.join(dir, "cgroup.procs"), String(process.pid));
      process.on("exit", () => {
        try {
          fs.writeFileSync(path.join(root, "cgroup.procs"), String(process.pid));
          fs.rmdirSync(dir);
        } catch {
          // the kernel removes nothing by itself; a leftover empty group is harmless
        }
      });
      return (bytes) => fs.writeFileSync(path.join(dir, limitFile), String(Math.ceil(bytes)));
    } catch {
      fs.rmdirSync(dir);
    }
  }
  return null;
}

const limit = ownCgroup();
let planned = 0;
await oneshot({
  model,
  scheme,
  output,
  numSamples: 4,
  maxSeqLength: 32,
  ...(group ? { expertGroupSize: Number(group) } : {}),
  warn: () => undefined,
  onProgress: (e) => {
    if (e.kind !== "plan") return;
    planned = e.plan.peak_memory_bytes;
    limit?.(1.1 * planned);
  },
});
process.stdout.write(JSON.stringify({ plan: planned, peak: peakRssBytes(), limited: limit !== null }));

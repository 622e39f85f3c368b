/**
 * The memory this process may still use: the host's free memory, or less where a control group
 * (a container, a systemd slice, a job scheduler's allocation) limits it. Read for cgroup v2
 * (`memory.max` - `memory.current` of this process's group and of every group above it) and v1
 * (`memory.limit_in_bytes` - `memory.usage_in_bytes` of the memory controller's group).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export interface MemorySources {
  /** the host's free memory in bytes */
  free: number;
  /** the text of /proc/self/cgroup, or null where there is none */
  procCgroup: string | null;
  /** reads a file under the cgroup mount (/sys/fs/cgroup), or null where it cannot */
  read: (rel: string) => string | null;
}

function readOrNull(file: string): string | null {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return null;
  }
}

/** This machine, read now. */
function host(): MemorySources {
  return {
    free: os.freemem(),
    procCgroup: readOrNull("/proc/self/cgroup"),
    read: (rel) => readOrNull(path.join("/sys/fs/cgroup", rel)),
  };
}

/** A byte count from a cgroup file; null for "max", an absent file, or v1's "no limit" (a value near 2^63). */
function bytes(text: string | null): number | null {
  const t = text?.trim();
  if (!t || t === "max" || !/^\d+$/.test(t)) return null;
  const n = Number(t);
  return n >= 2 ** 62 ? null : n;
}

/** The groups from `rel` up to the root: "/a/b" -> ["/a/b", "/a", "/"]. */
function ancestors(rel: string): string[] {
  const out: string[] = [];
  for (let p = path.posix.normalize(rel || "/"); ; p = path.posix.dirname(p)) {
    out.push(p);
    if (p === "/") return out;
  }
}

/** Headroom under each limit on the way up from this process's group: the smallest, or null without limits. */
function headroom(groups: string[], read: MemorySources["read"], limitFile: string, usageFile: string): number | null {
  let least: number | null = null;
  for (const g of groups) {
    const limit = bytes(read(path.posix.join(g, limitFile)));
    if (limit === null) continue;
    const used = bytes(read(path.posix.join(g, usageFile))) ?? 0;
    const room = Math.max(0, limit - used);
    least = least === null ? room : Math.min(least, room);
  }
  return least;
}

/** Bytes this process may still allocate: the least of the host's free memory and every cgroup limit's headroom. */
export function availableMemory(src: MemorySources = host()): number {
  let avail = src.free;
  for (const line of (src.procCgroup ?? "").split("\n")) {
    const [, controllers, rel] = /^\d+:([^:]*):(.*)$/.exec(line.trim()) ?? [];
    if (rel === undefined) continue;
    let room: number | null = null;
    if (controllers === "") room = headroom(ancestors(rel), src.read, "memory.max", "memory.current");
    else if (controllers?.split(",").includes("memory"))
      room = headroom(
        ancestors(rel).map((g) => path.posix.join("/memory", g)),
        src.read,
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
      );
    if (room !== null) avail = Math.min(avail, room);
  }
  return avail;
}

/**
 * This process's own peak resident memory in bytes: VmHWM of /proc/self/status where there is one.
 * getrusage's maxRSS is not this process's alone on Linux: a child started by posix_spawn (how
 * Node starts children) inherits its parent's high-water mark at exec, so a run started by a
 * large parent would report the parent's peak.
 */
export function peakRssBytes(): number {
  const status = readOrNull("/proc/self/status");
  const kb = status ? /^VmHWM:\s+(\d+)\s+kB$/m.exec(status)?.[1] : undefined;
  return kb !== undefined ? Number(kb) * 1024 : process.resourceUsage().maxRSS * 1024;
}

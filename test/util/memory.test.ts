import { test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { availableMemory } from "../../src/util/memory.js";
import { ROOT } from "../helpers.js";

const GiB = 1024 ** 3;
const files = (m: Record<string, string>) => (rel: string) => m[rel] ?? null;

test("cgroup v2: the least headroom of this process's group and every group above it, below the host's free memory", () => {
  const read = files({
    "/user.slice/job.scope/memory.max": String(8 * GiB),
    "/user.slice/job.scope/memory.current": String(3 * GiB),
    "/user.slice/memory.max": String(6 * GiB),
    "/user.slice/memory.current": String(2 * GiB),
    "/memory.max": "max",
  });
  assert.equal(availableMemory({ free: 100 * GiB, procCgroup: "0::/user.slice/job.scope\n", read }), 4 * GiB);
  assert.equal(
    availableMemory({ free: 1 * GiB, procCgroup: "0::/user.slice/job.scope\n", read }),
    1 * GiB,
    "the host's free memory when less",
  );
});

test("cgroup v2 inside a container (its own namespace: the group is /)", () => {
  const read = files({ "/memory.max": String(24 * GiB), "/memory.current": String(20 * GiB) });
  assert.equal(availableMemory({ free: 200 * GiB, procCgroup: "0::/\n", read }), 4 * GiB);
});

test("cgroup v1: the memory controller's limit less its usage; v1's 'no limit' (about 2^63) is no limit", () => {
  const v1 = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n";
  const limited = files({
    "/memory/docker/abc/memory.limit_in_bytes": String(16 * GiB),
    "/memory/docker/abc/memory.usage_in_bytes": String(10 * GiB),
    "/memory/docker/memory.limit_in_bytes": "9223372036854771712",
  });
  assert.equal(availableMemory({ free: 64 * GiB, procCgroup: v1, read: limited }), 6 * GiB);
  const unlimited = files({ "/memory/docker/abc/memory.limit_in_bytes": "9223372036854771712" });
  assert.equal(availableMemory({ free: 64 * GiB, procCgroup: v1, read: unlimited }), 64 * GiB);
});

test("no cgroup information: the host's free memory; this machine's reading is positive and at most its total", () => {
  assert.equal(availableMemory({ free: 5 * GiB, procCgroup: null, read: () => null }), 5 * GiB);
  const here = availableMemory();
  assert.ok(here > 0 && here <= os.totalmem(), String(here));
});

test("peakRssBytes is the child's own peak, where getrusage's maxRSS inherits a large parent's (what npm run bench recorded)", () => {
  const memoryJs = path.join(ROOT, "dist", "src", "util", "memory.js");
  const child = `const { peakRssBytes } = await import(${JSON.stringify(memoryJs)});
process.stdout.write(JSON.stringify({ own: peakRssBytes(), rusage: process.resourceUsage().maxRSS * 1024 }));`;
  // a parent holding 600 MB, touched, that starts the child
  const parent = `const big = Buffer.alloc(600 * 1024 * 1024, 1);
const r = require("node:child_process").spawnSync(process.execPath, ["--input-type=module", "-e", ${JSON.stringify(child)}], { encoding: "utf8" });
process.stdout.write(r.stdout + (big[12345] === 1 ? "" : "?"));`;
  const r = spawnSync(process.execPath, ["-e", parent], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const { own, rusage } = JSON.parse(r.stdout) as { own: number; rusage: number };
  assert.ok(own < 300 * 1024 ** 2, `own peak ${own / 1024 ** 2} MB`);
  if (os.platform() === "linux")
    assert.ok(rusage > 600 * 1024 ** 2, `maxRSS ${rusage / 1024 ** 2} MB: the inheritance this guards against`);
});

#!/usr/bin/env node
/**
 * The `moecal` command. It runs the CLI (main.ts) in a child process started with what a run
 * needs from the process itself, read only when a process starts (docs/performance.md):
 * - V8's garbage collection on the thread that needs it (`--single-threaded-gc`): its background
 *   threads would otherwise take cores from onnxruntime's, which use every core. A caller's node
 *   flag that names it replaces it (`node --no-single-threaded-gc moecal ...`); the caller's other
 *   node flags follow it.
 * - On Linux, glibc malloc asking for transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
 *   A GLIBC_TUNABLES of the caller's comes after it, so the caller's setting wins; one that already
 *   names hugetlb is left as it is.
 * When the caller's flags and setting already say both, the CLI runs in this process. Signals are
 * passed on, the child's exit is this process's, and the child stops when this process goes.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { STOP_SIGNALS } from "../util/interrupt.js";

const GC_FLAG = "--single-threaded-gc";
const own = process.env.GLIBC_TUNABLES;
const tunables = process.platform === "linux" && !(own ?? "").includes("glibc.malloc.hugetlb");
const gcFlag = !process.execArgv.some((a) => /^--(no-)?single[-_]threaded[-_]gc$/.test(a));
if (!tunables && !gcFlag) {
  await import("./main.js");
} else {
  const env: NodeJS.ProcessEnv = { ...process.env, MOECAL_LAUNCHED: "1" };
  if (tunables) env.GLIBC_TUNABLES = own ? `glibc.malloc.hugetlb=1:${own}` : "glibc.malloc.hugetlb=1";
  const child = spawn(
    process.execPath,
    [...(gcFlag ? [GC_FLAG] : []), ...process.execArgv, fileURLToPath(new URL("./main.js", import.meta.url)), ...process.argv.slice(2)],
    {
      stdio: ["inherit", "inherit", "inherit", "ipc"],
      env,
    },
  );
  const signals = Object.keys(STOP_SIGNALS) as NodeJS.Signals[];
  const pass = (s: NodeJS.Signals): void => void child.kill(s);
  for (const s of signals) process.on(s, pass);
  child.on("error", (e) => {
    process.stderr.write(`moecal: could not start ${process.execPath}: ${e.message}\n`);
    process.exit(70);
  });
  child.on("exit", (code, signal) => {
    for (const s of signals) process.off(s, pass);
    if (signal) process.kill(process.pid, signal);
    else process.exit(code ?? 1);
  });
}

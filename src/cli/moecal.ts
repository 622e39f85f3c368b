#!/usr/bin/env node
/**
 * The `moecal` command. It runs the CLI (main.ts) in a child process started with what a run
 * needs from the process itself, read only when a process starts (docs/performance.md):
 * - V8's garbage collection set for a run: two of its threads off (`--no-parallel-scavenge`,
 *   `--no-concurrent-sweeping`), as they took cores from onnxruntime's, which use every core
 *   (concurrent marking stays: without it garbage is freed later and the peak memory rises); its
 *   JavaScript heap grown by 4x its live size between full collections
 *   (`--heap-growing-percent=300`, V8's own largest factor), as V8 chose 1.1x for a run's small
 *   heap (tens of MB; the tensors are outside it) and so marked it nearly all the time. A node
 *   flag of the caller's that names one of these replaces it (`node --parallel-scavenge moecal
 *   ...`); the caller's other node flags follow them.
 * - On Linux, glibc malloc asking for transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
 *   A GLIBC_TUNABLES of the caller's comes after it, so the caller's setting wins; one that
 *   already names hugetlb is left as it is.
 * When the caller's flags and setting already say all of it, the CLI runs in this process.
 * Signals are passed on, the child's exit is this process's, and the child stops when this
 * process goes.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { STOP_SIGNALS } from "../util/interrupt.js";

const v8Flags = ["--no-parallel-scavenge", "--no-concurrent-sweeping", "--heap-growing-percent=300"];
/** the setting a node flag names: --parallel_scavenge, --no-parallel-scavenge -> --parallel-scavenge; --heap-growing-percent=100 -> --heap-growing-percent */
const setting = (flag: string): string => (flag.split("=")[0] as string).replace(/_/g, "-").replace(/^--no-/, "--");
const gcFlags = v8Flags.filter((f) => !process.execArgv.some((a) => setting(a) === setting(f)));
const own = process.env.GLIBC_TUNABLES;
const tunables = process.platform === "linux" && !(own ?? "").includes("glibc.malloc.hugetlb");
if (!tunables && gcFlags.length === 0) {
  await import("./main.js");
} else {
  const env: NodeJS.ProcessEnv = { ...process.env, MOECAL_LAUNCHED: "1" };
  if (tunables) env.GLIBC_TUNABLES = own ? `glibc.malloc.hugetlb=1:${own}` : "glibc.malloc.hugetlb=1";
  const child = spawn(
    process.execPath,
    [...gcFlags, ...process.execArgv, fileURLToPath(new URL("./main.js", import.meta.url)), ...process.argv.slice(2)],
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
    if (code !== null) process.exit(code);
    // die of the child's signal: without a listener its default action returns (only then, so a
    // signal arriving while this process exits is passed to nothing rather than killing it)
    for (const s of signals) process.off(s, pass);
    process.kill(process.pid, signal ?? "SIGKILL");
  });
}

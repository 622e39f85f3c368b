#!/usr/bin/env node
/**
 * The `moecal` command. On Linux it runs the CLI (main.ts) in a child process whose glibc malloc
 * asks for transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, read only when a process
 * starts: docs/performance.md, "Fresh memory"). A GLIBC_TUNABLES of the caller's comes after it,
 * so the caller's setting wins; one that already names hugetlb, and every other platform, runs the
 * CLI here. Signals are passed on, the child's exit is this process's, and the child stops when
 * this process goes.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { STOP_SIGNALS } from "../util/interrupt.js";

const own = process.env.GLIBC_TUNABLES;
if (process.platform !== "linux" || (own ?? "").includes("glibc.malloc.hugetlb")) {
  await import("./main.js");
} else {
  const env = { ...process.env, GLIBC_TUNABLES: own ? `glibc.malloc.hugetlb=1:${own}` : "glibc.malloc.hugetlb=1", MOECAL_LAUNCHED: "1" };
  const child = spawn(
    process.execPath,
    [...process.execArgv, fileURLToPath(new URL("./main.js", import.meta.url)), ...process.argv.slice(2)],
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

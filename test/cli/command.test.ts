/**
 * The `moecal` command (dist/src/cli/moecal.js, run as a program through its first line): it runs
 * the CLI in a child started without two of V8's garbage collection threads and with a larger
 * heap growing factor (before the caller's own node flags) and, on Linux, glibc malloc asking for
 * transparent huge pages (docs/performance.md), a GLIBC_TUNABLES of the caller's after that setting so that the caller's
 * wins; it passes signals on, exits as the child does, and the child stops when the command is
 * killed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { MOECAL_VERSION } from "../../src/paths.js";
import { ROOT, tempDir } from "../helpers.js";

const command = path.join(ROOT, "dist", "src", "cli", "moecal.js");
const linux = process.platform === "linux";
/** The V8 flags the command gives its CLI process. */
const GC_FLAGS = ["--no-parallel-scavenge", "--no-concurrent-sweeping", "--heap-growing-percent=300"];

/** An environment whose every node process prints a line "moecal-process PID LAUNCHED GLIBC_TUNABLES EXECARGV" to stderr when it starts. */
function reportingEnv(callerTunables: string | undefined): NodeJS.ProcessEnv {
  const preload = path.join(tempDir("moecal-command-"), "report.cjs");
  const line =
    '"moecal-process " + process.pid + " " + process.env.MOECAL_LAUNCHED + " " + process.env.GLIBC_TUNABLES + " " + JSON.stringify(process.execArgv) + "\\n"';
  fs.writeFileSync(preload, `process.stderr.write(${line});\n`);
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: `--require ${preload}` };
  delete env.MOECAL_LAUNCHED;
  if (callerTunables === undefined) delete env.GLIBC_TUNABLES;
  else env.GLIBC_TUNABLES = callerTunables;
  return env;
}

/** The processes the reporting preload saw: pid, whether the command launched it, its GLIBC_TUNABLES and node flags. */
function processes(stderr: string): { pid: number; launched: boolean; tunables: string; flags: string[] }[] {
  return stderr
    .split("\n")
    .filter((l) => l.startsWith("moecal-process "))
    .map((l) => {
      const [, pid, launched, tunables, flags] = l.split(" ");
      return { pid: Number(pid), launched: launched === "1", tunables: tunables as string, flags: JSON.parse(flags as string) as string[] };
    });
}

/** `moecal --version` started as `node FLAGS moecal.js`: the processes that ran. */
function version(flags: string[], callerTunables: string | undefined): ReturnType<typeof processes> {
  const r = spawnSync(process.execPath, [...flags, command, "--version"], { encoding: "utf8", env: reportingEnv(callerTunables) });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), MOECAL_VERSION);
  return processes(r.stderr);
}

test("the moecal command runs through its first line; its CLI process runs without V8's parallel scavenges and concurrent sweeping, with a heap growing factor of 4 and, on Linux, asks glibc's malloc for transparent huge pages", () => {
  const r = spawnSync(command, ["--version"], { encoding: "utf8", env: reportingEnv(undefined) });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), MOECAL_VERSION);
  const cli = processes(r.stderr).filter((p) => p.launched);
  assert.equal(cli.length, 1, r.stderr);
  assert.deepEqual(cli[0]?.flags, GC_FLAGS);
  assert.equal(cli[0]?.tunables, linux ? "glibc.malloc.hugetlb=1" : "undefined");
});

test("the caller's node flags go to the CLI process after the command's; one that names a garbage collection setting replaces it; with every setting given the CLI runs in the command's process", () => {
  const launched = (flags: string[]): string[][] =>
    version(flags, undefined)
      .filter((p) => p.launched)
      .map((p) => p.flags);
  assert.deepEqual(launched(["--stack-size=2000"]), [[...GC_FLAGS, "--stack-size=2000"]]);
  assert.deepEqual(launched(["--parallel_scavenge"]), [["--no-concurrent-sweeping", "--heap-growing-percent=300", "--parallel_scavenge"]]);
  assert.deepEqual(launched(["--heap_growing_percent=50"]), [
    ["--no-parallel-scavenge", "--no-concurrent-sweeping", "--heap_growing_percent=50"],
  ]);
  assert.deepEqual(
    launched(["--parallel-scavenge", "--concurrent-sweeping", "--heap-growing-percent=0"]),
    linux ? [["--parallel-scavenge", "--concurrent-sweeping", "--heap-growing-percent=0"]] : [],
  );
  const tunables = linux ? "glibc.malloc.hugetlb=0" : undefined;
  assert.deepEqual(
    version(GC_FLAGS, tunables).map((p) => [p.launched, p.flags]),
    [[false, GC_FLAGS]],
  );
});

test("a GLIBC_TUNABLES of the caller's comes after the command's setting; one that names hugetlb itself is left as it is", {
  skip: !linux,
}, () => {
  assert.deepEqual(
    version([], "glibc.malloc.arena_max=2")
      .filter((p) => p.launched)
      .map((p) => p.tunables),
    ["glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2"],
  );
  assert.deepEqual(
    version([], "glibc.malloc.hugetlb=0").map((p) => [p.launched, p.tunables]),
    [
      [false, "glibc.malloc.hugetlb=0"],
      [true, "glibc.malloc.hugetlb=0"],
    ],
  );
});

/** `moecal oneshot` on the bundled model, started through the command; resolves once its CLI process has begun calibrating. */
function startedOneshot(dir: string): Promise<{ child: ChildProcess; cliPid: number; stderr: () => string }> {
  const child = spawn(command, ["oneshot", "--num-samples", "8", "--output", path.join(dir, "out")], {
    cwd: dir,
    env: reportingEnv(undefined),
  });
  let err = "";
  return new Promise((resolve, reject) => {
    child.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
      const cli = processes(err).find((p) => p.launched);
      if (cli && /calibrat/.test(err)) resolve({ child, cliPid: cli.pid, stderr: () => err });
    });
    child.on("exit", () => reject(new Error(`oneshot ended before calibrating:\n${err}`)));
  });
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test("SIGTERM to the command reaches its CLI process, which stops cleanly; the command exits as it does (143)", {
  skip: !linux,
}, async () => {
  const dir = tempDir("moecal-command-term-");
  const { child, stderr } = await startedOneshot(dir);
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  child.kill("SIGTERM");
  assert.equal(await exited, 143, stderr());
  assert.match(stderr(), /interrupted \(SIGTERM\)/);
  assert.ok(!fs.existsSync(path.join(dir, "out")));
});

test("the command killed (SIGKILL): its CLI process stops too, before it writes anything", { skip: !linux }, async () => {
  const dir = tempDir("moecal-command-kill-");
  const { child, cliPid } = await startedOneshot(dir);
  child.kill("SIGKILL");
  const t0 = Date.now();
  while (alive(cliPid) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 50));
  assert.ok(!alive(cliPid), `the CLI process ${cliPid} still runs 20 s after the command was killed`);
  // a CLI process that went on would have finished the run (a few seconds) and written the output
  assert.ok(!fs.existsSync(path.join(dir, "out")), "the CLI process went on and wrote the output");
});

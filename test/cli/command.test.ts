/**
 * The `moecal` command as a shell starts it (the file run as a program, through its first line):
 * it runs, and it sets glibc's malloc to transparent huge pages (docs/performance.md, "Fresh
 * memory"), with a GLIBC_TUNABLES of the caller's after it, so that the caller's setting wins.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { MOECAL_VERSION } from "../../src/paths.js";
import { ROOT, tempDir } from "../helpers.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");

/** GLIBC_TUNABLES as the command's process sees it (a preloaded script prints it), and the command's stdout. */
function started(callerTunables: string | undefined): { tunables: string; stdout: string } {
  const dir = tempDir("moecal-command-");
  const preload = path.join(dir, "print-env.cjs");
  fs.writeFileSync(preload, 'process.stderr.write("GLIBC_TUNABLES=" + process.env.GLIBC_TUNABLES + "\\n");\n');
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: `--require ${preload}` };
  if (callerTunables === undefined) delete env.GLIBC_TUNABLES;
  else env.GLIBC_TUNABLES = callerTunables;
  const r = spawnSync(cli, ["--version"], { encoding: "utf8", env });
  assert.equal(r.status, 0, r.stderr);
  const line = r.stderr.split("\n").find((l) => l.startsWith("GLIBC_TUNABLES="));
  assert.ok(line, r.stderr);
  return { tunables: line.slice("GLIBC_TUNABLES=".length), stdout: r.stdout.trim() };
}

test("the moecal command runs through its first line and asks glibc's malloc for transparent huge pages", () => {
  const { tunables, stdout } = started(undefined);
  assert.equal(stdout, MOECAL_VERSION);
  assert.equal(tunables.split(":")[0], "glibc.malloc.hugetlb=1");
});

test("a GLIBC_TUNABLES of the caller's comes after the command's setting, so it wins", () => {
  const { tunables } = started("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2");
  assert.deepEqual(tunables.split(":"), ["glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2"]);
});

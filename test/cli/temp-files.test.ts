/**
 * Nothing outside the named folders: onnxruntime's telemetry client (since 1.29) writes
 * $TMPDIR/.ses and $TMPDIR/mat-debug-<pid>.log when a process makes its first session; moecal turns
 * it off, so oneshot (GPTQ, worker threads) and eval leave the temporary folder as they found it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { ROOT, TEXT, tempDir } from "../helpers.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");

test("oneshot (calibrated and data-free), eval, plan and inspect write nothing into the temporary folder (onnxruntime's telemetry files included)", () => {
  const dir = tempDir("moecal-temp-files-");
  const tmpdir = path.join(dir, "tmp");
  fs.mkdirSync(tmpdir);
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmpdir };
  delete env.ORT_DISABLE_TELEMETRY;
  const run = (...args: string[]): void => {
    const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", cwd: dir, env });
    assert.equal(r.status, 0, r.stderr);
  };
  run("oneshot", "--num-samples", "2", "--max-seq-length", "16", "--workers", "2", "--output", "out", "--quiet");
  run("oneshot", "--method", "rtn", "--scheme", "NVFP4A16", "--workers", "2", "--output", "free", "--quiet");
  run("eval", "--model", "out", "--dataset", path.join(TEXT, "eval-prose.jsonl"), "--num-samples", "1", "--quiet");
  run("plan", "--num-samples", "2");
  run("inspect", "free");
  assert.deepEqual(fs.readdirSync(tmpdir), []);
});

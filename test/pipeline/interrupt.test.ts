import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawn, spawnSync } from "node:child_process";
import { ROOT } from "../helpers.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-interrupt-"));
const model = path.join(tmp, "model");
const made = spawnSync(process.execPath, [cli, "random-model", "--output", model, "--layers", "8", "--set", "hidden_size=256", "--set", "num_experts=32", "--set", "moe_intermediate_size=128"], { encoding: "utf8" });

/** Start oneshot and send `signal` once layer 3 of 8 has started (shards and temporary files exist then). */
async function interrupted(signal: NodeJS.Signals, out: string): Promise<{ code: number | null; sig: NodeJS.Signals | null; stderr: string }> {
  const child = spawn(process.execPath, [cli, "oneshot", "--model", model, "--method", "rtn", "--num-samples", "4", "--max-seq-length", "32", "--output", out], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  let sent = false;
  return new Promise((resolve) => {
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (!sent && /layer 3\/8/.test(stderr)) {
        sent = true;
        child.kill(signal);
      }
    });
    child.on("exit", (code, sig) => resolve({ code, sig, stderr }));
  });
}

for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGKILL", null]] as const) {
  test(`${signal} in the middle of oneshot leaves no checkpoint where the output should be; rerunning succeeds`, async () => {
    assert.equal(made.status, 0, made.stderr);
    const out = path.join(tmp, `out-${signal}`);
    const r = await interrupted(signal, out);
    if (code === null) assert.equal(r.sig, "SIGKILL");
    else {
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stderr, new RegExp(`interrupted \\(${signal}\\); no output was written`));
      assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.startsWith(`.out-${signal}`)), [], "temporary folder removed");
    }
    assert.equal(fs.existsSync(out), false);
    const again = spawnSync(process.execPath, [cli, "oneshot", "--model", model, "--method", "rtn", "--num-samples", "2", "--max-seq-length", "16", "--output", out, "--quiet"], { encoding: "utf8" });
    assert.equal(again.status, 0, again.stderr);
    assert.ok(fs.existsSync(path.join(out, "config.json")));
    // a killed run's temporary folder is cleaned up by the next run
    assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.startsWith(`.out-${signal}`)), []);
  });
}

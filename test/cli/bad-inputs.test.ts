import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { BAD_INPUTS, cleanupCase, runCase } from "./bad-inputs.cases.js";
import { tempDir } from "../helpers.js";

const root = tempDir("moecal-bad-");

for (const [i, c] of BAD_INPUTS.entries()) {
  const skip = c.available?.() ?? false;
  test(`bad input: ${c.name} -> exit ${c.exitCode}, clear message, nothing written`, { skip }, () => {
    const dir = path.join(root, String(i));
    fs.mkdirSync(dir);
    try {
      const r = runCase(c, dir);
      assert.equal(r.status, c.exitCode, `exit code; stderr: ${r.stderr}`);
      assert.match(r.stderr + r.stdout, c.message); // inspect reports on stdout
      assert.doesNotMatch(r.stderr, /\n\s+at .+:\d+:\d+/, "no stack trace");
      const outs = [path.join(dir, "out"), path.join(dir, "small", "out")];
      for (const o of outs) {
        if (c.keepsOutput && o === outs[0]) continue;
        assert.equal(fs.existsSync(o), false, `${o} must not exist`);
      }
      for (const parent of [dir, path.join(dir, "small")]) {
        if (fs.existsSync(parent))
          assert.deepEqual(
            fs
              .readdirSync(parent)
              .filter((f) => f.includes(".tmp") || (f.endsWith(".moecal-lock") && c.name !== "another run is writing the output")),
            [],
            "no temporary folder or lock left",
          );
      }
      c.verify?.(dir);
    } finally {
      cleanupCase(dir);
    }
  });
}

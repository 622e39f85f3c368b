import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import semver from "semver";
import { ROOT } from "../helpers.js";

interface Lock {
  packages: Record<string, { version?: string; engines?: { node?: string } | string[] }>;
}

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as {
  engines: { node: string };
  allowScripts?: Record<string, boolean>;
};
const lock = JSON.parse(fs.readFileSync(path.join(ROOT, "package-lock.json"), "utf8")) as Lock;

test("every Node.js version package.json declares is one every locked dependency supports, and this Node.js is one of them", () => {
  const declared = pkg.engines.node;
  assert.ok(semver.satisfies(process.version, declared), `this Node.js ${process.version} is outside engines.node "${declared}"`);
  // the lowest version of each range the declaration allows
  const lows = declared.split("||").map((r) => semver.minVersion(r.trim())?.version as string);
  const refused: string[] = [];
  for (const [where, p] of Object.entries(lock.packages)) {
    const range = Array.isArray(p.engines) ? undefined : p.engines?.node;
    if (!where || !range) continue;
    for (const v of lows) if (!semver.satisfies(v, range)) refused.push(`${where}@${p.version}: engines.node "${range}" refuses ${v}`);
  }
  assert.deepEqual(refused, []);
});

test("onnxruntime-node's install script is denied (it would download CUDA libraries; the CPU binaries ship in the package)", () => {
  assert.equal(pkg.allowScripts?.["onnxruntime-node"], false);
  assert.equal(fs.existsSync(path.join(ROOT, ".npmrc")), false, "no .npmrc keys npm does not know (npm 11 warns about them)");
});

/** Print the README's table of bad inputs from real runs of the test cases: `npm run doc:bad-inputs`. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { BAD_INPUTS, cleanupCase, runCase } from "../test/cli/bad-inputs.cases.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bad-doc-"));
console.log("| bad input | exit | what the user sees (stderr) |");
console.log("|---|---:|---|");
for (const [i, c] of BAD_INPUTS.entries()) {
  const dir = path.join(root, String(i));
  fs.mkdirSync(dir);
  try {
    const r = runCase(c, dir);
    const lines = r.stderr.split("\n").filter((l) => l.startsWith("moecal:") || l.startsWith("error:"));
    // inspect reports its findings on stdout: the first one that matches the case
    if (lines.length === 0) lines.push(...r.stdout.split("\n").filter((l) => c.message.test(l)).slice(0, 1).map((l) => l.trim()));
    const msg = lines.join(" ").split(root).join("…").replace(/\|/g, "\\|");
    console.log(`| ${c.name} | ${r.status} | \`${msg}\` |`);
  } finally {
    cleanupCase(dir);
  }
}
fs.rmSync(root, { recursive: true, force: true });

/** Rewrite the table of bad inputs in docs/robustness.md from real runs of the test cases: `npm run doc:bad-inputs`. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { BAD_INPUTS, cleanupCase, runCase } from "../test/cli/bad-inputs.cases.js";
import { ROOT } from "../test/helpers.js";

const doc = path.join(ROOT, "docs", "robustness.md");
const START = "<!-- bad-inputs:start -->";
const END = "<!-- bad-inputs:end -->";
const root = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bad-doc-"));
const rows = ["| bad input | exit | what the user sees (stderr; inspect prints on stdout) |", "|---|---:|---|"];
for (const [i, c] of BAD_INPUTS.entries()) {
  if (c.available?.()) continue;
  const dir = path.join(root, String(i));
  fs.mkdirSync(dir);
  try {
    const r = runCase(c, dir);
    const lines = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("moecal:") || l.startsWith("error:") || l.startsWith("warning: restored"));
    // inspect reports its findings on stdout: the first one that matches the case
    if (lines.length === 0)
      lines.push(
        ...r.stdout
          .split("\n")
          .filter((l) => c.message.test(l))
          .slice(0, 1)
          .map((l) => l.trim()),
      );
    const msg = lines.join(" ").split(root).join("…").replace(/\|/g, "\\|");
    rows.push(`| ${c.name}${c.verify ? " (inputs checked unchanged)" : ""} | ${r.status} | \`${msg}\` |`);
  } finally {
    cleanupCase(dir);
  }
}
fs.rmSync(root, { recursive: true, force: true });
const text = fs.readFileSync(doc, "utf8");
const a = text.indexOf(START);
const b = text.indexOf(END);
if (a < 0 || b < a) throw new Error(`${doc}: markers ${START} / ${END} not found`);
fs.writeFileSync(doc, `${text.slice(0, a + START.length)}\n${rows.join("\n")}\n${text.slice(b)}`);
console.log(`${doc}: ${rows.length - 2} rows`);

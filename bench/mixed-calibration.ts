/**
 * A calibration file mixing the bundled model's three domains, disjoint from the evaluation
 * sets: the first 48 samples of calib-prose.jsonl and 40 JSON-record and 40 arithmetic samples
 * generated here in the evaluation sets' formats (3 records / 6 equations per sample) from a
 * fixed seed. `mixedCalibration(dir)` writes `calib-mixed.jsonl` there and returns its path;
 * a generated sample that repeats a line of an evaluation set is replaced by a fresh one.
 */
import fs from "node:fs";
import path from "node:path";
import { PACKAGE_ROOT } from "../src/paths.js";
import { rng } from "../src/util/random.js";

const WORDS = "alpha amber beta blue cedar cloud delta falcon gamma green harbor iron lumen north omega quartz red river south stone".split(
  " ",
);

function jsonRecord(r: () => number): string {
  const pick = (): string => WORDS[Math.floor(r() * WORDS.length)] as string;
  const tags = Array.from({ length: 1 + Math.floor(r() * 3) }, pick);
  const price = (Math.floor(r() * 50000) / 100).toFixed(2);
  return JSON.stringify({ id: Math.floor(r() * 100000), name: `${pick()}-${pick()}`, tags, price: Number(price), active: r() < 0.5 })
    .replace(/,"/g, ', "')
    .replace(/":/g, '": ')
    .replace(/","/g, '", "');
}

function equation(r: () => number): string {
  const a = Math.floor(r() * 1000);
  const b = Math.floor(r() * 1000);
  const op = ["+", "-", "*"][Math.floor(r() * 3)] as string;
  const c = op === "+" ? a + b : op === "-" ? a - b : a * b;
  return `${a} ${op} ${b} = ${c}`;
}

export function mixedCalibration(dir: string): string {
  const text = path.join(PACKAGE_ROOT, "test", "fixtures", "text");
  const lines = (f: string): string[] =>
    fs
      .readFileSync(path.join(text, f), "utf8")
      .trim()
      .split("\n")
      .map((l) => (JSON.parse(l) as { text: string }).text);
  const evalLines = new Set(
    ["eval-json.jsonl", "eval-arith.jsonl", "eval-prose.jsonl"].flatMap((f) => lines(f).flatMap((t) => t.split("\n"))),
  );
  const r = rng(20261130);
  const fresh = (make: () => string): string => {
    for (;;) {
      const l = make();
      if (!evalLines.has(l)) return l;
    }
  };
  const samples = [
    ...lines("calib-prose.jsonl").slice(0, 48),
    ...Array.from({ length: 40 }, () => Array.from({ length: 3 }, () => fresh(() => jsonRecord(r))).join("\n")),
    ...Array.from({ length: 40 }, () => Array.from({ length: 6 }, () => fresh(() => equation(r))).join("\n")),
  ];
  const file = path.join(dir, "calib-mixed.jsonl");
  fs.writeFileSync(file, `${samples.map((t) => JSON.stringify({ text: t })).join("\n")}\n`);
  return file;
}

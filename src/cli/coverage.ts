import type { Command } from "commander";
import { BUNDLED_MODEL } from "../paths.js";
import { measureCoverage } from "../pipeline/coverage.js";
import { intOption } from "./options.js";
import { stepsPrinter } from "./progress.js";

export function registerCoverage(program: Command): void {
  program
    .command("coverage")
    .description("tokens routed to each expert, per MoE layer, on the first N samples of a dataset")
    .option("--model <dir>", "model folder", BUNDLED_MODEL)
    .requiredOption("--dataset <file>", "JSON lines (text or messages) or .txt")
    .option("--num-samples <n>", "first N samples in file order (default: all)", intOption("--num-samples"))
    .option(
      "--max-seq-length <n>",
      "tokens per sample, BOS included (default 2048, at most max_position_embeddings)",
      intOption("--max-seq-length"),
    )
    .option("--json", "print JSON")
    .option("--quiet", "no progress output")
    .action(async (o: { model: string; dataset: string; numSamples?: number; maxSeqLength?: number; json?: boolean; quiet?: boolean }) => {
      const progress = o.quiet ? undefined : stepsPrinter(process.stderr, "coverage");
      const { json: _json, quiet: _quiet, ...run } = o;
      const cov = await measureCoverage({ ...run, onProgress: progress }).finally(() => progress?.stop());
      if (o.json) {
        const layers = Object.fromEntries(Object.entries(cov.layers).map(([l, c]) => [l, { routed: c.routed, seen: c.seen }]));
        process.stdout.write(`${JSON.stringify({ layers, samples: cov.samples, tokens: cov.tokens })}\n`);
        return;
      }
      process.stdout.write(`${cov.samples} samples, ${cov.tokens} tokens; tokens routed to each expert:\n`);
      const E = Object.values(cov.layers)[0]?.routed.length ?? 0;
      const w = Math.max(5, String(cov.tokens).length + 1);
      process.stdout.write(`layer ${Array.from({ length: E }, (_, e) => `e${e}`.padStart(w)).join("")}\n`);
      for (const [l, c] of Object.entries(cov.layers)) {
        process.stdout.write(`${l.padStart(5)} ${c.routed.map((n) => String(n).padStart(w)).join("")}   (min ${Math.min(...c.routed)})\n`);
      }
    });
}

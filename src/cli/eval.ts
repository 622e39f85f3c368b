import type { Command } from "commander";
import { evaluate } from "../pipeline/eval.js";
import { intOption } from "./options.js";
import { stepsPrinter } from "./progress.js";

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description("perplexity on a dataset, and mean per-token KL divergence from a reference model")
    .requiredOption("--model <dir>", "model folder (plain or compressed-tensors)")
    .option("--reference <dir>", "reference model for KL(reference || model)")
    .requiredOption("--dataset <file>", "JSON lines (text or messages) or .txt")
    .option("--num-samples <n>", "first N samples in file order (default: all)", intOption("--num-samples"))
    .option("--max-seq-length <n>", "tokens per sample, BOS included", intOption("--max-seq-length", 2))
    .option("--json", "print JSON: {nll, ppl, kl, tokens}")
    .option("--quiet", "no progress output")
    .option(
      "--kl-stats",
      "with --json, add kl_stats: how per-token KL is distributed (median, p99, max, mean without the top 1%, the top 1%'s share)",
    )
    .action(
      async (o: {
        model: string;
        reference?: string;
        dataset: string;
        numSamples?: number;
        maxSeqLength?: number;
        json?: boolean;
        klStats?: boolean;
        quiet?: boolean;
      }) => {
        const progress = o.quiet ? undefined : stepsPrinter(process.stderr, "eval");
        const { json: _json, klStats: _klStats, quiet: _quiet, ...run } = o;
        const r = await evaluate({ ...run, onProgress: progress }).finally(() => progress?.stop());
        const s = r.klStats;
        if (o.json) {
          const j: Record<string, unknown> = { nll: r.nll, ppl: r.ppl, kl: r.kl, tokens: r.tokens };
          if (o.klStats)
            j.kl_stats = s && {
              median: s.median,
              p99: s.p99,
              max: s.max,
              mean_without_top_1_percent: s.meanWithoutTop1Percent,
              top_1_percent_share: s.top1PercentShare,
            };
          process.stdout.write(`${JSON.stringify(j)}\n`);
          return;
        }
        const klText =
          r.kl === null || !s
            ? ""
            : `  kl ${r.kl.toExponential(4)} (median ${s.median.toExponential(2)}, max ${s.max.toExponential(2)}; the top 1% of tokens carry ${(100 * s.top1PercentShare).toFixed(0)}%)`;
        process.stdout.write(`tokens ${r.tokens}  nll ${r.nll.toFixed(5)}  ppl ${r.ppl.toFixed(4)}${klText}\n`);
      },
    );
}

import { Command } from "commander";
import { evaluate } from "../pipeline/eval.js";
import { intOption } from "./options.js";

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description("perplexity on a dataset, and mean per-token KL divergence from a reference model")
    .requiredOption("--model <dir>", "model folder (plain or compressed-tensors)")
    .option("--reference <dir>", "reference model for KL(reference || model)")
    .requiredOption("--dataset <file>", "JSON lines (text or messages) or .txt")
    .option("--num-samples <n>", "first N samples in file order (default: all)", intOption("--num-samples"))
    .option("--max-seq-length <n>", "tokens per sample, BOS included", intOption("--max-seq-length", 2))
    .option("--json", "print JSON")
    .action(async (o: { model: string; reference?: string; dataset: string; numSamples?: number; maxSeqLength?: number; json?: boolean }) => {
      const r = await evaluate(o);
      if (o.json) process.stdout.write(JSON.stringify(r) + "\n");
      else process.stdout.write(`tokens ${r.tokens}  nll ${r.nll.toFixed(5)}  ppl ${r.ppl.toFixed(4)}${r.kl === null ? "" : `  kl ${r.kl.toExponential(4)}`}\n`);
    });
}

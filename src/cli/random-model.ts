import type { Command } from "commander";
import { randomModel } from "../pipeline/random-model.js";
import { intOption } from "./options.js";

export function registerRandomModel(program: Command): void {
  program
    .command("random-model")
    .description("write a random-weight checkpoint shaped like a model's config (any supported family), for tests and benchmarks")
    .requiredOption("--output <dir>", "output folder")
    .option("--like <dir>", "take config and tokenizer from this model (default: the bundled one)")
    .option(
      "--family <model_type>",
      "start from this family's tiny preset (afmoe, qwen3_moe, qwen3_next, qwen3_5_moe, mixtral, glm4_moe, deepseek_v3, kimi_k2, minimax_m2) instead",
    )
    .option("--set <key=value>", "override a config.json field (repeatable)", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option("--layers <n>", "number of layers", intOption("--layers"))
    .option("--seed <n>", "random seed", intOption("--seed", 0), 0)
    .option("--overwrite", "replace an existing output folder")
    .option(
      "--fp8-block <n>",
      "store the layers' Linear weights as FP8 blocks of n x n, as DeepSeek-V3 is published",
      intOption("--fp8-block"),
    )
    .action(
      (o: {
        output: string;
        like?: string;
        family?: string;
        set: string[];
        layers?: number;
        seed: number;
        overwrite?: boolean;
        fp8Block?: number;
      }) => {
        const r = randomModel(o);
        process.stdout.write(`wrote ${r.output} (${(r.parameters / 1e6).toFixed(1)} M parameters)\n`);
      },
    );
}

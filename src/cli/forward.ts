import type { Command } from "commander";
import { BUNDLED_MODEL } from "../paths.js";
import { forwardFile } from "../pipeline/forward.js";

export function registerForward(program: Command): void {
  program
    .command("forward")
    .description("run the model on input_ids from a safetensors file; write logits and hidden states (F32)")
    .option("--model <dir>", "model folder", BUNDLED_MODEL)
    .requiredOption("--input-ids <file>", "safetensors file with input_ids I64 [batch, seq]")
    .requiredOption("--output <file>", "safetensors file to write (logits, hidden_states.{i})")
    .action(async (o: { model: string; inputIds: string; output: string }) => {
      const r = await forwardFile(o);
      process.stdout.write(`wrote ${o.output}: logits [${r.batch}, ${r.seq}, V] and hidden_states.0..${r.layers}\n`);
    });
}

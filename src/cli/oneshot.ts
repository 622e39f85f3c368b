import { Command } from "commander";
import { UsageError } from "../errors.js";

export function registerOneshot(program: Command): void {
  program
    .command("oneshot")
    .description("calibrate and quantize a model (not implemented yet)")
    .allowUnknownOption(true)
    .action(async () => {
      throw new UsageError("oneshot is not implemented yet; see the README's status section");
    });
}

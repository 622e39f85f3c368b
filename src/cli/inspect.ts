import type { Command } from "commander";
import { formatInspect, inspectCheckpoint } from "../export/inspect.js";

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description("audit a compressed-tensors checkpoint; exit code 1 when it finds a problem")
    .argument("<dir>", "checkpoint folder")
    .option("--json", "print JSON")
    .action((dir: string, o: { json?: boolean }) => {
      const r = inspectCheckpoint(dir);
      process.stdout.write(`${o.json ? JSON.stringify(r) : formatInspect(r)}\n`);
      if (r.problems.length > 0) process.exitCode = 1;
    });
}

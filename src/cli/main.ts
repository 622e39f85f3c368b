#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { InternalError, MoecalError } from "../errors.js";
import { keptWorkFolders } from "../pipeline/work-folder.js";
import { releaseActiveOutputs } from "../export/output.js";
import { MOECAL_VERSION } from "../paths.js";
import { registerForward } from "./forward.js";
import { registerOneshot, registerPlan } from "./oneshot.js";
import { registerCoverage } from "./coverage.js";
import { registerEval } from "./eval.js";
import { registerRandomModel } from "./random-model.js";
import { registerInspect } from "./inspect.js";

/** Build the `moecal` program. Commands only parse options and call library functions. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name("moecal")
    .description("Compress Mixture-of-Experts models (AFMoE, Qwen3-MoE, Mixtral, GLM-4.5) with every expert calibrated")
    .version(MOECAL_VERSION)
    .exitOverride()
    .showHelpAfterError();
  registerForward(program);
  registerOneshot(program);
  registerPlan(program);
  registerCoverage(program);
  registerEval(program);
  registerRandomModel(program);
  registerInspect(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    // commander printed its message; a bad option or argument is a usage error (2)
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof InternalError) {
      process.stderr.write(
        `moecal: internal error [${e.code}]: ${e.message}\nThis is a bug in moecal; please report it with the command you ran.\n${e.stack ?? ""}\n`,
      );
      return 70;
    }
    if (e instanceof MoecalError) {
      process.stderr.write(`moecal: error [${e.code}]: ${e.message}\n`);
      return e.code === "E_USAGE" ? 2 : 1;
    }
    process.stderr.write(`moecal: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 70;
  }
}

/** Each stops the run like Ctrl-C: the temporary output and the output's lock are removed, the exit code is 128 + the signal's number. */
const SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGTERM: 15 } as const;
for (const [signal, n] of Object.entries(SIGNALS)) {
  process.on(signal, () => {
    releaseActiveOutputs();
    const kept = keptWorkFolders();
    const resume = kept.length ? `; the finished layers are kept in ${kept.join(", ")}: rerun the same command to resume` : "";
    process.stderr.write(`\nmoecal: interrupted (${signal}); no output was written${resume}\n`);
    process.exit(128 + n);
  });
}

process.exitCode = await main(process.argv);

#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { InternalError, InterruptedError, MoecalError } from "../errors.js";
import { releaseWorkFolders } from "../pipeline/work-folder.js";
import { committedOutputs, releaseActiveOutputs } from "../export/output.js";
import { STOP_SIGNALS, nativeWorkInFlight, requestStop, stopRequested } from "../util/interrupt.js";
import { restoreTerminal } from "./progress.js";
import { MOECAL_VERSION } from "../paths.js";
import { registerForward } from "./forward.js";
import { registerOneshot, registerPlan } from "./oneshot.js";
import { registerCoverage } from "./coverage.js";
import { registerEval } from "./eval.js";
import { registerRandomModel } from "./random-model.js";
import { registerInspect } from "./inspect.js";
import { registerWorker } from "./worker.js";

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
  registerWorker(program);
  return program;
}

/** What an interrupted process tells the user: what was written, what was kept. */
function interruptedMessage(signal: NodeJS.Signals, kept: readonly string[]): string {
  const done = committedOutputs();
  const resume = kept.length ? `; the finished layers are kept in ${kept.join(", ")}: rerun the same command to resume` : "";
  if (done.length) return `moecal: interrupted (${signal}) after the output was put in place; it is complete: ${done.join(", ")}\n`;
  return `moecal: interrupted (${signal}); no output was written${resume}\n`;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    const stopped = stopRequested();
    // the stop came once the commit had begun (or after it): the output is complete, and the exit says it was interrupted
    if (stopped) {
      process.stderr.write(`\n${interruptedMessage(stopped, [])}`);
      return 128 + STOP_SIGNALS[stopped as keyof typeof STOP_SIGNALS];
    }
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    // commander printed its message; a bad option or argument is a usage error (2)
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof InterruptedError) {
      process.stderr.write(`\n${interruptedMessage(e.signal, releaseWorkFolders())}`);
      return 128 + STOP_SIGNALS[e.signal as keyof typeof STOP_SIGNALS];
    }
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
  } finally {
    restoreTerminal();
  }
}

/**
 * A signal asks the run to stop at its next safe point (library code throws InterruptedError
 * there, and every cleanup runs on the error path). While nothing native is in flight (no
 * onnxruntime call, no GPTQ job) the process stops at once: the temporary output and lock are
 * removed, a work folder without a finished layer too, and the terminal is restored.
 */
for (const [signal, n] of Object.entries(STOP_SIGNALS)) {
  process.on(signal, () => {
    requestStop(signal as NodeJS.Signals);
    if (nativeWorkInFlight()) return;
    releaseActiveOutputs();
    const kept = releaseWorkFolders();
    restoreTerminal();
    process.stderr.write(`\n${interruptedMessage(signal as NodeJS.Signals, kept)}`);
    process.exit(128 + n);
  });
}

// started by the `moecal` command (moecal.ts): stop when it goes, as if its SIGKILL had reached us
if (process.env.MOECAL_LAUNCHED === "1" && process.connected) {
  process.on("disconnect", () => process.kill(process.pid, "SIGKILL"));
  process.channel?.unref();
}

/** Resolves once everything written to `stream` so far has been handed to the system. */
const flushed = (stream: NodeJS.WriteStream): Promise<void> => new Promise((resolve) => stream.write("", () => resolve()));

/**
 * Exit here rather than let the event loop drain: a natural exit first closes the signal
 * handlers (their default action returns) and then tears down worker threads and onnxruntime,
 * so a signal in those last milliseconds killed a run that had finished. `process.exit` keeps
 * the handlers installed to the end, where a late signal is ignored.
 */
const code = await main(process.argv);
await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
process.exit(code);

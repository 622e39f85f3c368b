/**
 * Stopping a run at a safe point. A signal handler (the CLI's) calls `requestStop`; the library
 * throws `InterruptedError` at its next safe point (`checkStop`: between samples, layers and
 * engine calls, and before an output is committed), so every cleanup runs on the normal error
 * path. Native calls (onnxruntime sessions) and GPTQ jobs in flight are counted: a process must
 * not exit under them (onnxruntime aborts in native code when torn down mid-call).
 */
import { InterruptedError } from "../errors.js";

/** The signals that stop a run (the CLI's handlers), with their numbers: the exit code is 128 + the number. */
export const STOP_SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGTERM: 15 } as const;

let requested: NodeJS.Signals | null = null;
let busy = 0;

/** Ask the run to stop at its next safe point. */
export function requestStop(signal: NodeJS.Signals): void {
  requested ??= signal;
}

/** The signal a stop was asked for with, or null. */
export function stopRequested(): NodeJS.Signals | null {
  return requested;
}

/** A safe point: throws InterruptedError when a stop was asked for. */
export function checkStop(): void {
  if (requested) throw new InterruptedError(requested);
}

/** Let a pending signal's handler run (signals are seen only between event-loop turns), then check. */
export async function safePoint(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
  checkStop();
}

/** Whether native work (an onnxruntime call, a GPTQ job) is in flight: exiting now could abort the process. */
export function nativeWorkInFlight(): boolean {
  return busy > 0;
}

/** Run `fn` counted as native work in flight; a stop asked for meanwhile is honoured when it returns. */
export async function native<T>(fn: () => Promise<T>): Promise<T> {
  busy++;
  let result: T;
  try {
    result = await fn();
  } finally {
    busy--;
  }
  checkStop();
  return result;
}

/** Count a job running elsewhere (a GPTQ worker) as native work in flight until it settles. */
export function inFlight<T>(job: Promise<T>): Promise<T> {
  busy++;
  const settled = job.finally(() => {
    busy--;
  });
  settled.catch(() => undefined); // the caller handles the job's own promise
  return job;
}

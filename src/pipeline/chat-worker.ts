/**
 * Renders chat templates on a worker thread, so that a template that runs away (an endless or
 * enormous loop) can be stopped: the caller waits a bounded time, then terminates the worker.
 */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { Template } from "@huggingface/jinja";

interface Data {
  template: string;
  port: MessagePort;
  flag: Int32Array;
  maxChars: number;
}

const { template, port, flag, maxChars } = workerData as Data;
let compiled: Template | null = null;
let compileError: string | null = null;
try {
  compiled = new Template(template);
} catch (e) {
  compileError = `does not parse (${(e as Error).message})`;
}

parentPort?.on("message", (vars: Record<string, unknown>) => {
  let reply: { text: string } | { error: string };
  if (!compiled) reply = { error: compileError ?? "does not parse" };
  else {
    try {
      const text = compiled.render(vars);
      reply = text.length > maxChars ? { error: `renders ${text.length} characters, over the limit of ${maxChars}` } : { text };
    } catch (e) {
      reply = { error: `fails (${(e as Error).message})` };
    }
  }
  port.postMessage(reply);
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
});

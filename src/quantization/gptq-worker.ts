/**
 * A GPTQ worker thread: runs gptqWithPrep on jobs from the pool with its own single-threaded
 * onnxruntime engine, so the column loops of several Linears run on several cores at once.
 */
import { parentPort } from "node:worker_threads";
import { OrtEngine, setEngine } from "../engine/index.js";
import { MoecalError } from "../errors.js";
import { type GptqJob, type GptqJobReply, runGptqJob } from "./gptq-pool.js";

setEngine(new OrtEngine(1));

parentPort?.on("message", async (job: GptqJob) => {
  let reply: GptqJobReply;
  try {
    const r = await runGptqJob(job);
    reply = { id: job.id, result: r };
    const p = r.weight.params;
    const transfer = [
      r.weight.codes.buffer,
      p.scale.buffer,
      r.dequantized.buffer,
      r.rowLoss.buffer,
      ...(p.zeroPoint ? [p.zeroPoint.buffer] : []),
      ...(p.nvfp4 ? [p.nvfp4.groupScale.buffer] : []),
    ] as ArrayBuffer[];
    parentPort?.postMessage(reply, transfer);
  } catch (e) {
    reply = {
      id: job.id,
      error: { name: (e as Error).name, code: e instanceof MoecalError ? e.code : "E_INTERNAL", message: (e as Error).message },
    };
    parentPort?.postMessage(reply);
  }
});

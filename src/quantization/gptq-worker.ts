/**
 * A GPTQ worker thread: runs gptqWithPrep on jobs from the pool with its own single-threaded
 * onnxruntime engine, so the column loops of several Linears run on several cores at once.
 */
import { OrtEngine, setEngine } from "../engine/index.js";
import { serveJobs } from "../util/worker-pool.js";
import { runGptqJob } from "./gptq-pool.js";

setEngine(new OrtEngine(1));

serveJobs(runGptqJob, (r) => {
  const p = r.weight.params;
  return [
    r.weight.codes.buffer,
    p.scale.buffer,
    r.dequantized.buffer,
    r.rowLoss.buffer,
    ...(p.zeroPoint ? [p.zeroPoint.buffer] : []),
    ...(p.nvfp4 ? [p.nvfp4.groupScale.buffer] : []),
  ] as ArrayBuffer[];
});

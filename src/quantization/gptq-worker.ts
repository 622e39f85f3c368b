/**
 * A GPTQ worker thread: runs gptqWithPrep on jobs from the pool with its own single-threaded
 * onnxruntime engine, so the column loops of several Linears run on several cores at once.
 */
import { OrtEngine, setEngine } from "../engine/index.js";
import { ownedBuffers, serveJobs } from "../util/worker-pool.js";
import { runGptqJob } from "./gptq-pool.js";

setEngine(new OrtEngine(1));

serveJobs(runGptqJob, (r) => {
  const p = r.weight.params;
  // the dequantized weight is the job's own (moved here, or shared memory)
  return ownedBuffers([
    r.weight.codes,
    p.scale,
    r.dequantized,
    r.rowLoss,
    ...(p.zeroPoint ? [p.zeroPoint] : []),
    ...(p.nvfp4 ? [p.nvfp4.groupScale] : []),
  ]);
});

/** A data-free worker thread: quantizes the Linears of jobs from the pool (data-free-job.ts). */
import { ownedBuffers, serveJobs } from "../util/worker-pool.js";
import { runDataFreeJob } from "./data-free-job.js";

serveJobs(runDataFreeJob, (tensors) => ownedBuffers(tensors.map((t) => t.bytes)));

/** A weight-loading worker thread: reads and converts the stored tensors the pool sends (load-pool.ts). */
import { serveJobs } from "../util/worker-pool.js";
import { LOAD_KIND } from "./load-pool.js";

serveJobs(LOAD_KIND.run, (r) => [r.data.buffer as ArrayBuffer]);

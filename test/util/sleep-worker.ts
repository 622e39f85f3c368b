/** A worker for worker-pool.test.ts: each job sleeps `ms` and replies with when it started and ended (ms since the epoch). */
import { serveJobs } from "../../src/util/worker-pool.js";

serveJobs(
  async (job: { ms: number }) => {
    const start = performance.timeOrigin + performance.now();
    await new Promise((resolve) => setTimeout(resolve, job.ms));
    return { start, end: performance.timeOrigin + performance.now() };
  },
  () => [],
);

/** A hashing worker thread: SHA-256 of the files the pool sends (checkpointHash). */
import { serveJobs } from "../util/worker-pool.js";
import { HASH_KIND } from "./hash.js";

serveJobs(HASH_KIND.run, () => []);

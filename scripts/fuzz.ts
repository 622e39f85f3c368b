/** Long fuzzing run of the safetensors reader: `npm run fuzz -- [runs]` (default 100000). */
import { fuzz } from "../test/io/fuzz.js";

const runs = Number(process.argv[2] ?? 100000);
const t0 = performance.now();
const r = fuzz(runs);
console.log(`${runs} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${r.ok} read correctly, ${r.rejected} rejected with MoecalError`);

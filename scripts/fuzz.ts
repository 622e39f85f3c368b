/** Long fuzzing run of the safetensors reader and of inspect: `npm run fuzz -- [runs] [inspect runs]` (default 100000, 2000). */
import { fuzz } from "../test/io/fuzz.js";
import { fuzzInspect } from "../test/export/inspect-fuzz.js";

const runs = Number(process.argv[2] ?? 100000);
const t0 = performance.now();
const r = fuzz(runs);
console.log(
  `${runs} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${r.ok} read correctly, ${r.rejected} rejected with MoecalError`,
);

const inspectRuns = Number(process.argv[3] ?? 2000);
const t1 = performance.now();
const ri = await fuzzInspect(inspectRuns);
console.log(
  `${inspectRuns} mutated checkpoints through inspect in ${((performance.now() - t1) / 1000).toFixed(1)} s: ${ri.problems} with problems reported, ${ri.clean} clean, ${ri.refused} refused with MoecalError`,
);

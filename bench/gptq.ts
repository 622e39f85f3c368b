/**
 * `npm run bench:gptq`: GPTQ of every expert Linear of one Nano-shaped block (W4A16, group 128,
 * actorder static), statistics from the fast calibration path on BENCH_TOKENS tokens (2048),
 * against the per-expert PyTorch GPTQ of bench/torch_seed.py on the same weights and input, in
 * the same run (skipped when no Python with torch is found). GPTQ workers: MOECAL_GPTQ_WORKERS.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CalibrationAfmoeMoE } from "../src/calibration/afmoe.js";
import { attachHessianObservers } from "../src/calibration/observers.js";
import { quantizeLayerLinears } from "../src/pipeline/quantize-layer.js";
import { resolveScheme } from "../src/quantization/scheme.js";
import { gptqWorkerCount } from "../src/quantization/gptq-pool.js";
import { Linear } from "../src/nn/layers.js";
import { nanoBlock, torchPeer, writeBlock } from "./nano-block.js";

async function main(): Promise<void> {
  const tokens = Number(process.env.BENCH_TOKENS ?? 2048);
  const { config, block, x } = nanoBlock(tokens);
  const calib = new CalibrationAfmoeMoE(block, config, { calibrateAllExperts: true, fastPath: true });
  const obs = attachHessianObservers(calib, (n) => n.startsWith("experts."));
  await calib.call(x);
  obs.remove();
  const linears = new Map(calib.namedModules().filter(([n, m]) => m instanceof Linear && n.startsWith("experts.")).map(([n, m]) => [n, m as Linear]));
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-gptq-"));
  const torch = process.env.BENCH_NO_TORCH ? null : torchPeer(writeBlock(work, block, x));
  fs.rmSync(work, { recursive: true, force: true });
  const t0 = performance.now();
  await quantizeLayerLinears({ linears, hessians: obs.stats, inputAbsMax: new Map() }, resolveScheme("W4A16"), "gptq", "F32", { dampening: 0.01, blockSize: 128, warn: () => undefined, layerLabel: "bench" });
  const ours = (performance.now() - t0) / 1000;
  const ratio = torch ? (torch.gptq_seconds / ours).toFixed(2) + "x" : "n/a";
  console.log(`GPTQ of ${linears.size} expert Linears (${tokens} calibration tokens): ours ${ours.toFixed(2)} s (${gptqWorkerCount()} workers), PyTorch per-expert ${torch ? torch.gptq_seconds.toFixed(2) + " s" : "not run"}; ours ${ratio} faster`);
}

await main();

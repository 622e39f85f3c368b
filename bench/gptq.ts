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
import { type HessianStats, attachHessianObservers } from "../src/calibration/observers.js";
import { type ExpertStatisticsOptions, SEED_STATISTICS } from "../src/calibration/expert-statistics.js";
import { Tensor } from "../src/engine/tensor.js";
import { quantizeLayerLinears } from "../src/pipeline/quantize-layer.js";
import { resolveScheme } from "../src/quantization/scheme.js";
import { closeSharedGptqPool, gptqWorkerCount } from "../src/quantization/gptq-pool.js";
import { Linear } from "../src/nn/layers.js";
import { nanoBlock, torchPeer, writeBlock } from "./nano-block.js";

/**
 * Seconds for GPTQ of the block's Linears, twice on the same weights: cold (worker threads
 * started and compiled in the timing) and warm (as for every layer after the first in oneshot,
 * whose workers live across layers).
 */
export async function timeGptqBlock(
  linears: Map<string, Linear>,
  stats: Map<string, HessianStats>,
): Promise<{ cold: number; warm: number }> {
  const original = new Map([...linears].map(([n, l]) => [n, l.weight.data.slice()]));
  const W4A16 = resolveScheme("W4A16");
  const once = async (): Promise<number> => {
    for (const [n, l] of linears)
      l.parameter("weight").value = new Tensor((original.get(n) as Float32Array).slice(), [l.outFeatures, l.inFeatures]);
    const t0 = performance.now();
    await quantizeLayerLinears(
      { linears, hessians: stats, inputAbsMax: new Map() },
      () => W4A16,
      () => "gptq",
      "F32",
      {
        dampening: 0.01,
        blockSize: 128,
        warn: () => undefined,
        layerLabel: "bench",
      },
    );
    return (performance.now() - t0) / 1000;
  };
  const cold = await once();
  const warm = await once();
  return { cold, warm };
}

/** The block's expert Linears and their statistics from one fast-path calibration call. */
async function calibrated(
  block: ReturnType<typeof nanoBlock>,
  statistics: ExpertStatisticsOptions,
): Promise<{ linears: Map<string, Linear>; stats: Map<string, HessianStats>; seconds: number }> {
  const calib = new CalibrationAfmoeMoE(block.block, block.config, { calibrateAllExperts: true, fastPath: true });
  const obs = attachHessianObservers(calib, (n) => n.startsWith("experts."), "", statistics);
  const t0 = performance.now();
  await calib.call(block.x);
  const seconds = (performance.now() - t0) / 1000;
  obs.remove();
  const linears = new Map(
    calib
      .namedModules()
      .filter(([n, m]) => m instanceof Linear && n.startsWith("experts."))
      .map(([n, m]) => [n, m as Linear]),
  );
  return { linears, stats: obs.stats, seconds };
}

async function main(): Promise<void> {
  const tokens = Number(process.env.BENCH_TOKENS ?? 2048);
  const nano = nanoBlock(tokens);
  await calibrated(nanoBlock(tokens), SEED_STATISTICS); // warm-up: engine sessions built outside the timings
  const { linears, stats, seconds: calibSeconds } = await calibrated(nano, SEED_STATISTICS);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-gptq-"));
  const torch = process.env.BENCH_NO_TORCH ? null : torchPeer(writeBlock(work, nano.block, nano.x));
  fs.rmSync(work, { recursive: true, force: true });
  const { cold, warm } = await timeGptqBlock(linears, stats);
  const ratio = (s: number): string => (torch ? `${(torch.gptq_seconds / s).toFixed(2)}x` : "n/a");
  console.log(
    `GPTQ of ${linears.size} expert Linears (${tokens} calibration tokens, ${gptqWorkerCount()} workers): ours ${warm.toFixed(2)} s warm (${ratio(warm)} faster), ${cold.toFixed(2)} s cold (${ratio(cold)}); PyTorch per-expert ${torch ? `${torch.gptq_seconds.toFixed(2)} s` : "not run"}`,
  );
  // router-aware statistics: every expert its own gate/up Hessian, so one damped Cholesky per expert instead of one per block
  const aware = await calibrated(nanoBlock(tokens), { statistics: { kind: "unrouted", alpha: 0.1 }, routedWeight: "one" });
  const awareTime = await timeGptqBlock(aware.linears, aware.stats);
  await closeSharedGptqPool();
  console.log(
    `router-aware statistics (unrouted:0.1): GPTQ ${awareTime.warm.toFixed(2)} s warm, ${(awareTime.warm / warm).toFixed(2)}x the seed's statistics in the same run; calibration pass ${aware.seconds.toFixed(2)} s vs ${calibSeconds.toFixed(2)} s (${(aware.seconds / calibSeconds).toFixed(2)}x)`,
  );
}

if (import.meta.url === `file://${process.argv[1]}`) await main();

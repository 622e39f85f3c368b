/**
 * A dense layer of a distributed run (DeepSeek-V3's and GLM-4.5's first ones): all of it is the
 * non-expert part, so it runs as an MoE layer's does (token-shards.ts): calibrate shards whose
 * statistics are added here in shard order, a GPTQ job for each Linear, and, but after the last
 * layer, output shards that write the next layer's inputs. The bytes are the local run's.
 */
import { loadParametersAsync, unloadParameters } from "../nn/weights.js";
import type { LazyRaw, NamedRaw } from "../io/writer.js";
import { remoteOutput } from "./group-output.js";
import { type LayerOutcome, type LayerSteps, inLinearOrder, observeAndQuantize, wholeLayerTensors } from "./layer-steps.js";
import { groupFiles } from "./moe-stream.js";
import type { RemoteExecutor } from "./remote-groups.js";
import { remoteCalibration, removeShardFiles, writeNonExpert } from "./token-shards.js";
import type { HiddenWriter, WorkFolder } from "./work-folder.js";

/** Run dense layer `i` as jobs of `remote`: what it did, its output tensors, the next layer's inputs (null after the last). */
export async function shardedLayer(
  steps: LayerSteps,
  job: { i: number; work: WorkFolder; last: boolean; remote: RemoteExecutor },
): Promise<{ part: LayerOutcome; tensors: (NamedRaw | LazyRaw)[]; next: Pick<HiddenWriter, "commit"> | null; clean(): void }> {
  const { run } = steps;
  const { i, work, remote } = job;
  const prefix = `model.layers.${i}`;
  const layer = run.model.model.layers.at(i);
  const files = groupFiles(work.dir, i);
  const progress = run.opts.onProgress;
  const inLayer = (n: string): boolean => n.startsWith(`${prefix}.`);
  await loadParametersAsync(run.model, run.source, run.mapping, inLayer);
  try {
    progress?.({ kind: "phase", layer: i, phase: "calibrate" });
    const jobs = remoteCalibration(remote, i, work.dir, steps.shards);
    const part = await observeAndQuantize(steps, layer, i, () => true, jobs.pass, { pool: jobs.pool });
    let next: Pick<HiddenWriter, "commit"> | null = null;
    if (!job.last) {
      progress?.({ kind: "phase", layer: i, phase: "propagate" });
      writeNonExpert(files, layer, prefix, part.results);
      next = await remoteOutput(steps, i, work, remote, null);
    }
    progress?.({ kind: "phase", layer: i, phase: "write" });
    const { results, fallbacks, allTokenFallbacks } = inLinearOrder(layer, i, part);
    return {
      part: { results, fallbacks, allTokenFallbacks },
      tensors: wholeLayerTensors(run, layer, i, results),
      next,
      clean: () => removeShardFiles(work.dir, i, steps.shards),
    };
  } finally {
    unloadParameters(run.model, inLayer);
  }
}

/**
 * A distributed run's token-shard jobs: the non-expert part of an MoE layer (attention, router,
 * shared experts) over one shard of the layer's inputs (layer-inputs.ts), in three phases:
 *
 * - calibrate: with the original weights, the shard's statistics of the non-expert Linears (their
 *   input Gram sums and maxima), the tokens routed to each expert, and the MoE block's calls streamed;
 * - propagate: through the quantized non-expert part (its weights from the coordinator's file), the
 *   block's calls streamed;
 * - output: the layer's outputs, each call's routed sum read back, written at the shard's place.
 *
 * The coordinator adds the shards' statistics in shard order (addShardStats), as a local run adds
 * its own shards' (HessianStats.endShard): the same bits. Files are named by the shard, so a job
 * done twice writes the same bytes to the same names.
 */
import fs from "node:fs";
import { z } from "zod";
import type { GptqPool } from "../quantization/gptq-pool.js";
import { remoteGptqPool, removeGptqFiles } from "./gptq-jobs.js";
import type { RemoteExecutor } from "./remote-groups.js";
import type { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError, UsageError } from "../errors.js";
import { trackCoverage } from "../calibration/coverage.js";
import { type NamedRaw, bytesOf, encodeSafetensors } from "../io/writer.js";
import type { DecoderLayer } from "../models/family.js";
import { Linear } from "../nn/layers.js";
import { loadParametersAsync, unloadParameters } from "../nn/weights.js";
import { checkedOutput, finalPass } from "./group-output.js";
import { type InputShard, eachInShards, hiddenSizeOf, readHiddenShard, writeHiddenShard } from "./layer-inputs.js";
import { type LayerSteps, type PassObservers, expertsOf, observeLayer } from "./layer-steps.js";
import { groupFiles, streamCalls } from "./moe-stream.js";
import { RESTART, openPrivateSafetensors, readPrivateText, writeAtomic } from "./work-folder.js";

export type ShardPhase = "calibrate" | "propagate" | "output";

type Files = ReturnType<typeof groupFiles>;

const count = z.number().int().nonnegative();
/** What a calibration shard saw: each observed Linear's rows (its Gram sum in the statistics file, under its own name or `same_as`'s), input maxima, tokens routed to each expert. */
const SHARD_RESULT = z.strictObject({
  shard: count,
  rows: z.record(z.string(), count),
  same_as: z.record(z.string(), z.string()),
  absmax: z.record(z.string(), z.strictObject({ absmax: z.number().nonnegative(), rows: count })),
  routed: z.array(count),
});
type ShardResult = z.infer<typeof SHARD_RESULT>;

/**
 * One token-shard job: the non-expert part of layer `i` loaded (for the later phases, with the
 * coordinator's quantized weights), run over shard `s` of the layer's inputs in the work folder `dir`.
 * `routed`: for an MoE layer's output phase, where the shard's routed sums start in the sums file of
 * `done` groups. A dense layer is all non-expert: its calibrate and output shards run it whole.
 */
export async function tokenShardJob(
  steps: LayerSteps,
  dir: string,
  i: number,
  s: InputShard & { phase: ShardPhase; tag: string; routed?: { done: number; at: number }; slots?: string },
): Promise<void> {
  const { run } = steps;
  const layer = run.model.model.layers.at(i);
  const prefix = `model.layers.${i}`;
  const experts = expertsOf(layer, prefix);
  const moe = experts !== null;
  const expertOf = experts?.expertOf ?? new Map<string, number>();
  const linearExpert = experts?.linearExpert ?? new Map<string, number>();
  const files = groupFiles(dir, i);
  const H = hiddenSizeOf(run.model);
  const inputs = readHiddenShard(dir, i - 1, s, H);
  const shardSteps: LayerSteps = {
    ...steps,
    samples: s.lengths.length,
    eachInput: (_, each, endShard) => eachInShards([inputs], each, endShard),
  };
  const params = (n: string): boolean => n.startsWith(`${prefix}.`) && !expertOf.has(n);
  await loadParametersAsync(run.model, run.source, run.mapping, params);
  try {
    if (s.phase === "calibrate") return await calibrateShard(shardSteps, layer, i, files, { ...s, linearExpert, moe });
    loadNonExpert(layer, prefix, files.nonExpert);
    if (s.phase === "propagate")
      return await streamCalls(shardSteps, layer, i, { file: files.calls("propagate", s.shard), calibrate: false, tag: s.tag });
    const { routed, slots } = s;
    if ((moe && !routed) || !slots) throw new UsageError(`layer ${i} shard ${s.shard}: an output job names no routed sums or outputs file`);
    const out: Tensor[] = [];
    const append = (t: Tensor): void => void out.push(t);
    if (routed) await finalPass(shardSteps, layer, i, { file: files.routed(routed.done), at: routed.at }, { append });
    else await shardSteps.eachInput(i, async (h) => append(await checkedOutput(layer, i, h)));
    writeHiddenShard(dir, i, { ...s, slots }, H, out);
  } finally {
    unloadParameters(run.model, params);
  }
}

/** Observe the non-expert Linears over the shard (its MoE calls streamed), and write what they saw. */
async function calibrateShard(
  steps: LayerSteps,
  layer: DecoderLayer,
  i: number,
  files: Files,
  s: InputShard & { tag: string; linearExpert: Map<string, number>; moe: boolean },
): Promise<void> {
  const tracker = trackCoverage(layer, `model.layers.${i}`);
  let targets: Awaited<ReturnType<typeof observeLayer>>["targets"];
  try {
    ({ targets } = await observeLayer(
      steps,
      layer,
      i,
      (n) => !s.linearExpert.has(n),
      () =>
        s.moe
          ? streamCalls(steps, layer, i, { file: files.calls("calibrate", s.shard), calibrate: true, tag: s.tag })
          : steps.eachInput(i, async (h) => void (await layer.call(h))),
    ));
  } finally {
    tracker.remove();
  }
  const r: ShardResult = { shard: s.shard, rows: {}, same_as: {}, absmax: {}, routed: tracker.coverage.layers[String(i)]?.routed ?? [] };
  const tensors: NamedRaw[] = [];
  const written: [string, Float32Array][] = [];
  for (const [n, st] of targets.hessians) {
    const acc = st.ownSum();
    r.rows[n] = acc?.rows ?? 0;
    if (!acc || acc.rows === 0) continue;
    // Linears reading one tensor (q, k, v) summed the same products: their sum is written once
    const twin = written.find(
      ([m, G]) => r.rows[m] === acc.rows && G.length === acc.G.length && Buffer.compare(bytesOf(G), bytesOf(acc.G)) === 0,
    );
    if (twin) r.same_as[n] = twin[0];
    else {
      written.push([n, acc.G]);
      tensors.push({ name: n, dtype: "F32", shape: [st.inFeatures, st.inFeatures], bytes: bytesOf(acc.G) });
    }
  }
  for (const [n, a] of targets.inputAbsMax) r.absmax[n] = { absmax: a.absmax, rows: a.rows };
  writeAtomic(files.shardStats(s.shard), encodeSafetensors(tensors), s.tag);
  writeAtomic(files.shardResult(s.shard), [Buffer.from(JSON.stringify(r))], s.tag);
}

/** Shard `k`'s result, checked. */
export function readShardResult(files: Files, k: number): ShardResult {
  const file = files.shardResult(k);
  let v: unknown;
  try {
    v = JSON.parse(readPrivateText(file, "shard result"));
  } catch (cause) {
    if (!(cause instanceof SyntaxError)) throw cause;
  }
  const r = SHARD_RESULT.safeParse(v);
  if (!r.success || r.data.shard !== k)
    throw new CheckpointFormatError(`the work folder is damaged: ${file}: not the result of shard ${k}; ${RESTART}`);
  return r.data;
}

/**
 * Add shard `s`'s statistics to the observers of the coordinator's non-expert Linears, as a shard of
 * their own (endShard), its input maxima, and its tokens routed to each expert to `routed`.
 */
export function addShardStats(files: Files, s: InputShard, o: PassObservers, routed: number[] | null): void {
  const r = readShardResult(files, s.shard);
  const file = files.shardStats(s.shard);
  const damaged = (why: string): never => {
    throw new CheckpointFormatError(`the work folder is damaged: ${file}: ${why}; ${RESTART}`);
  };
  const f = openPrivateSafetensors(file);
  // Linears that share one written sum (q, k, v) come one after another: it is read once for them
  let last = null as { name: string; G: Float32Array } | null;
  for (const [n, st] of o.hessians) {
    const rows = r.rows[n] ?? damaged(`no rows of ${n}`);
    if (rows === 0) continue;
    const name = r.same_as[n] ?? n;
    if (last?.name !== name) last = { name, G: f.readF32(name).data };
    if (last.G.length !== st.inFeatures ** 2) damaged(`the Gram sums of ${n} are not ${st.inFeatures} x ${st.inFeatures}`);
    st.own.addGram(last.G, rows);
  }
  o.endShard();
  for (const [n, a] of o.inputAbsMax) {
    const v = r.absmax[n] ?? damaged(`no input maximum of ${n}`);
    a.absmax = Math.max(a.absmax, v.absmax);
    a.rows += v.rows;
  }
  if (routed) {
    if (r.routed.length !== routed.length) damaged(`its routed tokens name ${r.routed.length} experts, not ${routed.length}`);
    for (const [e, c] of r.routed.entries()) routed[e] = (routed[e] as number) + c;
  }
}

/**
 * The coordinator's side of a layer's calibrate shards and GPTQ jobs: the pass that has the shards
 * run and adds their statistics to its observers in shard order (and the tokens they routed to each
 * expert to `routed()`), and the GPTQ pool whose jobs the workers run.
 */
export function remoteCalibration(
  remote: RemoteExecutor,
  i: number,
  dir: string,
  shards: readonly InputShard[],
  routed: () => number[] | null = () => null,
): { pass: (o: PassObservers) => Promise<void>; pool: Pick<GptqPool, "submit"> } {
  const files = groupFiles(dir, i);
  return {
    pass: async (o) => {
      await remote.shards(i, "calibrate", shards);
      for (const s of shards) addShardStats(files, s, o, routed());
    },
    pool: remoteGptqPool(dir, i, (n, linear) => remote.gptq(i, n, linear)),
  };
}

/** Remove layer `i`'s token-shard and GPTQ job files from the work folder `dir` (after the layer is saved). */
export function removeShardFiles(dir: string, i: number, shards: readonly InputShard[]): void {
  const files = groupFiles(dir, i);
  fs.rmSync(files.nonExpert, { force: true });
  for (const { shard: k } of shards)
    for (const f of [files.calls("calibrate", k), files.calls("propagate", k), files.shardStats(k), files.shardResult(k)])
      fs.rmSync(f, { force: true });
  removeGptqFiles(dir, i);
}

/** The quantized non-expert Linears' weights (dequantized float32), for the propagation and output shards. */
export function writeNonExpert(files: Files, layer: DecoderLayer, prefix: string, results: readonly { name: string }[]): void {
  const modules = new Map(layer.namedModules(prefix));
  const tensors: NamedRaw[] = results.map((q) => {
    const lin = modules.get(q.name);
    if (!(lin instanceof Linear)) throw new CheckpointFormatError(`${q.name} is not a Linear of ${prefix}`);
    return { name: `${q.name}.weight`, dtype: "F32", shape: [lin.outFeatures, lin.inFeatures], bytes: bytesOf(lin.weight.data) };
  });
  writeAtomic(files.nonExpert, encodeSafetensors(tensors));
}

/** Put the coordinator's quantized non-expert weights in place of the loaded ones. */
function loadNonExpert(layer: DecoderLayer, prefix: string, file: string): void {
  const f = openPrivateSafetensors(file);
  const modules = new Map(layer.namedModules(prefix));
  for (const name of f.tensors.keys()) {
    const lin = modules.get(name.slice(0, -".weight".length));
    const w = f.readF32(name);
    if (!(lin instanceof Linear) || !name.endsWith(".weight") || w.size !== lin.outFeatures * lin.inFeatures)
      throw new CheckpointFormatError(`${file}: ${name} is not a weight of a Linear of ${prefix}; ${RESTART}`);
    lin.parameter("weight").value = w.reshape([lin.outFeatures, lin.inFeatures]);
  }
}

/**
 * The end of an MoE layer run in expert groups (expert-groups.ts): its output hidden states, from a
 * pass with each MoE call's routed sum read back, and its output tensors, in its parameter order,
 * read one at a time from the groups' files.
 */
import type { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError } from "../errors.js";
import { inputScaleTensor } from "../export/compressed-tensors.js";
import type { SafetensorsFile } from "../io/safetensors.js";
import type { LazyRaw, NamedRaw } from "../io/writer.js";
import type { DecoderLayer } from "../models/family.js";
import { withRoutedOverride } from "../nn/moe.js";
import { assertFinite } from "../nn/weights.js";
import type { GroupResult } from "./group-state.js";
import { type LayerSteps, type PartResult, layerOutputTensors, quantizedTensors, schemeOfTarget } from "./layer-steps.js";
import { type groupFiles, streamRecords } from "./moe-stream.js";
import { staticInputScale } from "./quantize-layer.js";
import { type HiddenWriter, RESTART, type WorkFolder, openPrivateSafetensors } from "./work-folder.js";
import { hiddenSizeOf, hiddenSlots, tokensIn, withSumsAt } from "./layer-inputs.js";
import type { RemoteExecutor } from "./remote-groups.js";

/** The layer's outputs of a batch, checked finite. */
export async function checkedOutput(layer: DecoderLayer, i: number, h: Tensor): Promise<Tensor> {
  const out = await layer.call(h);
  assertFinite(out, `layer ${i}: output hidden states (calibration data through the quantized layer)`);
  return out;
}

/**
 * The layer over its inputs once more, each MoE call's routed sum read back from `sums.file` (from
 * byte `sums.at`: a token shard's first call) instead of computed: the next layer's inputs.
 */
export async function finalPass(
  steps: LayerSteps,
  layer: DecoderLayer,
  i: number,
  sums: { file: string; at?: number },
  next: Pick<HiddenWriter, "append">,
): Promise<void> {
  const records = streamRecords(sums.file, sums.at ?? 0);
  const progress = steps.run.opts.onProgress;
  try {
    await withRoutedOverride(
      async (input, routed) => {
        const r = await records.next();
        if (r.done || r.value.flat.size !== routed.size || r.value.flat.dim(0) !== input.flat.dim(0))
          throw new CheckpointFormatError(`${sums.file}: its calls do not match the layer's; ${RESTART}`);
        routed.data.set(r.value.flat.data);
      },
      () =>
        steps.eachInput(i, async (h, done, tokens) => {
          next.append(await checkedOutput(layer, i, h));
          progress?.({ kind: "samples", layer: i, phase: "propagate", done, total: steps.samples, tokens });
        }),
    );
  } finally {
    await records.return(undefined);
  }
}

/**
 * The layer's outputs, the next layer's inputs (written; committed with the layer): from a pass with
 * each call's routed sum read back from the sums file of all `l.groups` groups, here, or by a
 * RemoteExecutor's output shard jobs, each written at its shard's place.
 */
export async function layerOutput(
  steps: LayerSteps,
  l: { i: number; layer: DecoderLayer; groups: number; files: ReturnType<typeof groupFiles> },
  work: WorkFolder,
  remote?: RemoteExecutor,
): Promise<Pick<HiddenWriter, "commit">> {
  steps.run.opts.onProgress?.({ kind: "phase", layer: l.i, phase: "propagate" });
  if (!remote) {
    const next = work.hiddenWriter(l.i);
    try {
      await finalPass(steps, l.layer, l.i, { file: l.files.routed(l.groups) }, next);
    } catch (e) {
      next.abandon();
      throw e;
    }
    return next;
  }
  return remoteOutput(steps, l.i, work, remote, l.groups);
}

/**
 * Layer `i`'s outputs written by a RemoteExecutor's output shard jobs into a preallocated file: an
 * MoE layer's with each call's routed sum read back from the sums file of `groups` groups, a dense
 * layer's (`groups` null) as they come.
 */
export async function remoteOutput(
  steps: LayerSteps,
  i: number,
  work: WorkFolder,
  remote: RemoteExecutor,
  groups: number | null,
): Promise<Pick<HiddenWriter, "commit">> {
  const H = hiddenSizeOf(steps.run.model);
  const slots = hiddenSlots(work.dir, i, { tokens: tokensIn(steps.shards), H }, remote.session);
  try {
    const jobs =
      groups === null ? steps.shards : withSumsAt(steps.shards, H).map(({ at, ...s }) => ({ ...s, routed: { done: groups, at } }));
    await remote.shards(i, "output", jobs);
  } catch (e) {
    slots.abandon();
    throw e;
  }
  return slots;
}

/**
 * The layer's output tensors in its parameter order: the non-expert part's from memory, each
 * group's read back from its file. A static-activation Linear that saw no rows takes the largest
 * input scale of the whole layer, known only now: its input scale is written here.
 */
export function assembleLayer(
  steps: LayerSteps,
  layer: DecoderLayer,
  i: number,
  nonExpert: PartResult,
  groups: readonly GroupResult[],
  files: ReturnType<typeof groupFiles>,
): (NamedRaw | LazyRaw)[] {
  const { run } = steps;
  const layerMax = Math.max(nonExpert.absMax, ...groups.map((r) => r.absmax));
  const noRows = new Set(
    [...nonExpert.fallbacks, ...groups.flatMap((r) => r.fallbacks)].filter((f) => f.reason === "no-activation-rows").map((f) => f.module),
  );
  const scaleOf = (name: string): number => staticInputScale(schemeOfTarget(run)(name), layerMax, run.scaleDType);
  const quantized = new Map<string, () => (NamedRaw | LazyRaw)[]>();
  for (const q of nonExpert.results)
    quantized.set(q.name, () => quantizedTensors(run, noRows.has(q.name) ? { ...q, inputScale: scaleOf(q.name) } : q));
  for (const [g, group] of groups.entries()) {
    let file: SafetensorsFile | null = null;
    const fileOf = (): SafetensorsFile => {
      if (!file) {
        file = openPrivateSafetensors(files.tensors(g));
      }
      return file;
    };
    for (const r of group.results) {
      const format = schemeOfTarget(run)(r.name).format;
      const scale = noRows.has(r.name) ? inputScaleTensor(r.name, format, run.scaleDType, scaleOf(r.name)) : null;
      quantized.set(r.name, () =>
        r.tensors.map((n): NamedRaw | LazyRaw => {
          if (n === scale?.name) return scale;
          const info = fileOf().tensors.get(n);
          if (!info) throw new CheckpointFormatError(`${files.tensors(g)}: no tensor "${n}"; ${RESTART}`);
          return { name: n, dtype: info.dtype, shape: info.shape, read: () => fileOf().readRaw(n).bytes };
        }),
      );
    }
  }
  return layerOutputTensors(run, layer, i, (n) => quantized.get(n)?.() ?? null);
}

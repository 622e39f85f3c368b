/**
 * An MoE layer's jobs run by another executor (workers on NATS: src/distributed/), in any order:
 * token shards of its non-expert part (token-shards.ts) and expert groups; what they are given and
 * must do (RemoteExecutor), and how the routed rows the group jobs write are added to the layer's
 * sums in the local run's order (expert-groups.ts runs the rest).
 */
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError } from "../errors.js";
import { type RoutedInput, addRoutedRows } from "../nn/moe.js";
import { checkStop } from "../util/interrupt.js";
import { readGroupResult } from "./group-state.js";
import { callFiles, callRecords, type groupFiles, streamRecords, streamWriter } from "./moe-stream.js";
import type { InputShard } from "./layer-inputs.js";
import type { ShardPhase } from "./token-shards.js";
import { type CheckpointStage, RESTART } from "./work-folder.js";

/**
 * Another executor of a layer's jobs (workers on NATS: distributed/coordinator.ts): it has each
 * token shard's files written by `tokenShardJob`, each GPTQ job's by `gptqJob`, and each group's by
 * `quantizeGroupJob`, in any order.
 */
export interface RemoteExecutor {
  /** names the layer outputs file its output jobs write into (layer-inputs.ts slotsFileOf): an earlier executor's jobs never write into it */
  session: string;
  /** token-shard jobs of one phase (each shard of the layer's inputs; for the output phase, where its routed sums start) */
  shards(layer: number, phase: ShardPhase, shards: readonly ShardJob[]): Promise<void>;
  /** GPTQ job `n` of the layer, of `linear` (its inputs and result: gptq-jobs.ts) */
  gptq(layer: number, n: number, linear: string): Promise<void>;
  /** `sums`: the groups' routed rows too (every layer but the last); `shards`: the layer's calls are in that many shard files (0: one file) */
  quantize(layer: number, groups: readonly GroupSpan[], o: { sums: boolean; shards: number }): Promise<void>;
  /** workers waiting for a job now (a layer's default groups give each one) */
  idleWorkers(): Promise<number>;
}

/** A token shard given to a job: the shard, and for the output phase where its routed sums start (the sums file of `done` groups, byte `at`). */
export type ShardJob = InputShard & { routed?: { done: number; at: number } };

/** Group `group` of a layer: experts [first, end), `size` experts a group. */
export interface GroupSpan {
  group: number;
  first: number;
  end: number;
  size: number;
}

/**
 * The routed outputs of groups quantized by other processes, added to the sums in one pass over the
 * propagation calls: per call, the sums of the groups before them, then each group's rows (its job's
 * routedRows) in group order, each in servedExperts' order: the whole layer's sum, bit for bit.
 */
export async function addRemoteSums(
  l: { files: ReturnType<typeof groupFiles>; last: boolean; stop: (stage: CheckpointStage) => void },
  spans: readonly GroupSpan[],
  shards: number,
): Promise<void> {
  for (const s of spans) readGroupResult(l.files, s.group, s.first, s.end);
  if (l.last) return;
  const from = (spans[0] as GroupSpan).group;
  const w = streamWriter(l.files.routed(from + spans.length));
  const before = from > 0 ? streamRecords(l.files.routed(from)) : null;
  const rows = spans.map((s) => streamRecords(l.files.rows(s.group)));
  const calls = callFiles(l.files, "propagate", shards);
  try {
    for await (const input of callRecords(calls)) {
      checkStop();
      const prev = before ? await before.next() : null;
      if (prev?.done) throw new CheckpointFormatError(`${l.files.routed(from)}: fewer calls than the layer's propagation; ${RESTART}`);
      const sum = prev ? (prev.value as RoutedInput).flat : Tensor.zeros([input.flat.dim(0), input.flat.dim(1)]);
      for (const [k, s] of spans.entries()) {
        const r = await (rows[k] as AsyncGenerator<RoutedInput>).next();
        if (r.done || !addRoutedRows(input, s.end - s.first, s.first, sum, r.value.flat))
          throw new CheckpointFormatError(`${l.files.rows(s.group)}: its rows do not match the layer's propagation calls; ${RESTART}`);
      }
      w.append(sum);
    }
    w.commit();
    l.stop("group-sums");
  } catch (e) {
    w.abandon();
    throw e;
  } finally {
    await before?.return(undefined);
    for (const r of rows) await r.return(undefined);
  }
}

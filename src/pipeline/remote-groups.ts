/**
 * Expert groups quantized by another executor (workers on NATS: src/distributed/), in any order:
 * what it is given (GroupSpan) and must do (GroupExecutor), and how the routed rows its jobs write
 * are added to the layer's sums in the local run's order (expert-groups.ts runs the rest).
 */
import { Tensor } from "../engine/tensor.js";
import { CheckpointFormatError } from "../errors.js";
import { type RoutedInput, addRoutedRows } from "../nn/moe.js";
import { checkStop } from "../util/interrupt.js";
import { readGroupResult } from "./group-state.js";
import { type groupFiles, streamRecords, streamWriter } from "./moe-stream.js";
import { type CheckpointStage, RESTART } from "./work-folder.js";

/**
 * Another executor of a layer's expert groups (workers on NATS: distributed/coordinator.ts): it has
 * each group's tensors and result files written, in any order, by `quantizeGroupJob`.
 */
export interface GroupExecutor {
  /** `sums`: the groups' routed rows too (every layer but the last) */
  quantize(layer: number, groups: readonly GroupSpan[], sums: boolean): Promise<void>;
  /** workers waiting for a job now (a layer's default groups give each one) */
  idleWorkers(): Promise<number>;
}

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
): Promise<void> {
  for (const s of spans) readGroupResult(l.files, s.group, s.first, s.end);
  if (l.last) return;
  const from = (spans[0] as GroupSpan).group;
  const w = streamWriter(l.files.routed(from + spans.length));
  const before = from > 0 ? streamRecords(l.files.routed(from)) : null;
  const rows = spans.map((s) => streamRecords(l.files.rows(s.group)));
  try {
    for await (const input of streamRecords(l.files.propagate)) {
      checkStop();
      const prev = before ? await before.next() : null;
      if (prev?.done) throw new CheckpointFormatError(`${l.files.routed(from)}: fewer calls than ${l.files.propagate}; ${RESTART}`);
      const sum = prev ? (prev.value as RoutedInput).flat : Tensor.zeros([input.flat.dim(0), input.flat.dim(1)]);
      for (const [k, s] of spans.entries()) {
        const r = await (rows[k] as AsyncGenerator<RoutedInput>).next();
        if (r.done || !addRoutedRows(input, s.end - s.first, s.first, sum, r.value.flat))
          throw new CheckpointFormatError(`${l.files.rows(s.group)}: its rows do not match the calls of ${l.files.propagate}; ${RESTART}`);
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

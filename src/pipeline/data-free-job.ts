/**
 * One unit of the data-free executor: a Linear (or, for NVFP4, the members of a vLLM fused set in
 * one layer, which share a global scale) read as stored, decoded, checked finite, quantized by
 * round-to-nearest and turned into its compressed-tensors tensors. Runs on a worker thread
 * (data-free-worker.ts) or, with no workers, on the main thread: the same function, the same bytes.
 */
import { giveBuffer, takeFloats } from "../engine/scratch.js";
import { Tensor } from "../engine/tensor.js";
import { bf16ToF32Checked } from "../engine/dtype.js";
import { type StoredTensor, storedToF32 } from "../io/checkpoint.js";
import type { NamedRaw } from "../io/writer.js";
import { assertFinite } from "../nn/weights.js";
import { quantizedLinearTensors } from "../export/compressed-tensors.js";
import { rtnQuantize } from "../quantization/gptq.js";
import { type ScaleDType, absMax, nvfp4GlobalScale } from "../quantization/params.js";
import { type Scheme, isNvfp4 } from "../quantization/scheme.js";
import { assertComplete } from "./preflight.js";
import { assertValidQParams } from "./quantize-layer.js";
import { ownsBuffer } from "../util/worker-pool.js";

export interface DataFreeMember {
  /** the Linear's module name */
  name: string;
  /** its weight's name in the checkpoint (named in errors) */
  source: string;
  out: number;
  inF: number;
  stored: StoredTensor;
}

export interface DataFreeJob {
  layer: number;
  /** one Linear, or an NVFP4 fused set's members present in the layer, in output order */
  members: DataFreeMember[];
  scheme: Scheme;
  scaleDType: ScaleDType;
  /** the model folder, named in errors */
  dir: string;
}

/** The members' output tensors, in member order (each Linear's in compressed-tensors' order). */
export async function runDataFreeJob(job: DataFreeJob): Promise<NamedRaw[]> {
  const { scheme, scaleDType } = job;
  const weights = job.members.map((m) => decode(m, `${job.dir}: tensor "${m.source}"`));
  // NVFP4: one global scale for the set, the smallest of its members' (as the calibrated path computes it)
  const global = isNvfp4(scheme.weights) ? Math.min(...weights.map((w) => nvfp4GlobalScale(absMax(w), scaleDType))) : null;
  const out: NamedRaw[] = [];
  job.members.forEach((m, k) => {
    const rows = global === null ? undefined : new Float32Array(m.out).fill(global);
    const q = rtnQuantize(weights[k] as Float32Array, m.out, m.inF, scheme.weights, scaleDType, m.name, rows);
    assertValidQParams(q, `layer ${job.layer}: ${m.name}`);
    const tensors = quantizedLinearTensors(m.name, q, scheme.format, scaleDType, null);
    assertComplete(
      m.name,
      tensors.map((t) => t.name),
      scheme,
    );
    out.push(...tensors);
  });
  for (const w of weights) giveBuffer(w.buffer);
  return out;
}

/**
 * A member's weight in float32 (scratch memory: fresh arrays cost page faults), checked finite.
 * BF16, the usual source, is widened in one pass that also spots a non-finite value (exponent
 * bits all ones); the error is assertFinite's either way.
 */
function decode(m: DataFreeMember, where: string): Float32Array {
  const n = m.out * m.inF;
  const w = takeFloats(n);
  const raw = "raw" in m.stored ? m.stored.raw : null;
  if (raw?.dtype === "BF16" && raw.bytes.byteOffset % 2 === 0) {
    const bits = new Uint16Array(raw.bytes.buffer, raw.bytes.byteOffset, n);
    if (!bf16ToF32Checked(bits, w).finite) assertFinite(new Tensor(w, [m.out, m.inF]), where);
    return w;
  }
  const v = storedToF32(m.stored, where, w);
  if (v !== w) w.set(v);
  assertFinite(new Tensor(w, [m.out, m.inF]), where);
  return w;
}

/** A stored tensor whose bytes own their buffer (a slice where they are a view into a larger one: a shared read buffer must not move). */
export function owned(t: StoredTensor): StoredTensor {
  const own = (u: Uint8Array): Uint8Array => (ownsBuffer(u) ? u : u.slice());
  if ("raw" in t) return { raw: { ...t.raw, bytes: own(t.raw.bytes) } };
  const f = t.fp8;
  const codes = own(f.codes);
  const scaleInv = ownsBuffer(f.scaleInv) ? f.scaleInv : f.scaleInv.slice();
  return { fp8: { ...f, codes, scaleInv } };
}

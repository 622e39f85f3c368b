/**
 * A distributed run's GPTQ jobs for the non-expert Linears of an MoE layer: the coordinator's
 * quantizeLayerLinears hands each GPTQ job (its weight, Hessian and NVFP4 global scales) to a
 * worker through the work folder instead of a thread (remoteGptqPool); the worker runs the same
 * runGptqJob with the scheme its own run gives the Linear, and writes the result back. The result is
 * the thread's, bit for bit; a failed factorisation comes back as one, and falls back as it would here.
 */
import fs from "node:fs";
import path from "node:path";
import { CheckpointFormatError, NumericalError } from "../errors.js";
import { type NamedRaw, bytesOf, encodeSafetensors } from "../io/writer.js";
import type { SafetensorsFile } from "../io/safetensors.js";
import type { GptqResult } from "../quantization/gptq.js";
import { type GptqJob, type GptqPool, runGptqJob } from "../quantization/gptq-pool.js";
import type { QParams } from "../quantization/params.js";
import type { LayerSteps } from "./layer-steps.js";
import { RESTART, openPrivateSafetensors, writeAtomic } from "./work-folder.js";

/** A GPTQ job's files in the work folder `dir`: its inputs (written by the coordinator) and its result (by the worker). */
export function gptqFiles(dir: string, i: number, n: number): { inputs: string; result: string } {
  return { inputs: path.join(dir, `layer-${i}-gptq-${n}.in.safetensors`), result: path.join(dir, `layer-${i}-gptq-${n}.out.safetensors`) };
}

/** Remove the GPTQ job files of layer `i` in `dir`. */
export function removeGptqFiles(dir: string, i: number): void {
  for (const f of fs.readdirSync(dir)) if (f.startsWith(`layer-${i}-gptq-`)) fs.rmSync(path.join(dir, f), { force: true });
}

/** A typed array as a tensor to write (its bytes, not copied). */
const raw = (name: string, dtype: NamedRaw["dtype"], a: ArrayBufferView, shape: number[]): NamedRaw => ({
  name,
  dtype,
  shape,
  bytes: bytesOf(a),
});

/**
 * A GPTQ pool whose jobs with a Hessian of their own run as jobs of `run` (`n`: the job's number in
 * the layer); a job with a Hessian prepared for several (the routed experts') runs here.
 */
export function remoteGptqPool(dir: string, i: number, run: (n: number, linear: string) => Promise<void>): Pick<GptqPool, "submit"> {
  let count = 0;
  return {
    submit: async (make) => {
      const job = make();
      if (!("hessian" in job.prep)) return { result: runGptqJob(job) };
      const n = count++;
      const files = gptqFiles(dir, i, n);
      const { hessian, inF } = job.prep;
      const tensors = [raw("weight", "F32", job.weight, [job.out, inF]), raw("hessian", "F32", hessian, [inF, inF])];
      if (job.globalScale) tensors.push(raw("global_scale", "F32", job.globalScale, [job.out]));
      writeAtomic(files.inputs, encodeSafetensors(tensors, { name: job.name, dampening: JSON.stringify(job.prep.dampening) }));
      return { result: run(n, job.name).then(() => readGptqResult(files.result, job)) };
    },
  };
}

/** One GPTQ job in a worker: the inputs read, the Linear's scheme from this worker's run, the result written (a failed factorisation too). */
export async function gptqJob(steps: LayerSteps, dir: string, i: number, j: { n: number; linear: string; tag: string }): Promise<void> {
  const { run } = steps;
  const files = gptqFiles(dir, i, j.n);
  const f = openPrivateSafetensors(files.inputs);
  const name = f.metadata.name;
  const weight = f.readF32("weight");
  const [out, inF] = weight.shape as [number, number];
  const hessian = f.readF32("hessian");
  const scheme = run.schemeOf(j.linear);
  if (name === undefined || name.split(" ")[0] !== j.linear || !scheme || hessian.size !== inF * inF)
    throw new CheckpointFormatError(`${files.inputs}: not the GPTQ inputs of ${j.linear}; ${RESTART}`);
  const job: GptqJob = {
    weight: weight.data,
    out,
    prep: { hessian: hessian.data, inF, dampening: Number(JSON.parse(f.metadata.dampening ?? "null")), blockSize: steps.gptq.blockSize },
    args: scheme.weights,
    dtype: run.scaleDType,
    name,
    ...(f.tensors.has("global_scale") ? { globalScale: f.readF32("global_scale").data } : {}),
  };
  let r: GptqResult;
  try {
    r = await runGptqJob(job);
  } catch (e) {
    if (!(e instanceof NumericalError)) throw e;
    writeAtomic(files.result, encodeSafetensors([], { failed: e.message }), j.tag);
    return;
  }
  const meta = { loss: JSON.stringify(r.loss), group_size: JSON.stringify(r.weight.params.groupSize) };
  writeAtomic(files.result, encodeSafetensors(resultTensors(r), meta), j.tag);
}

function resultTensors(r: GptqResult): NamedRaw[] {
  const { codes, params, out, inF } = r.weight;
  const g = params.groups;
  return [
    raw("codes", codes instanceof Int8Array ? "I8" : "U8", codes, [out, inF]),
    raw("scale", "F32", params.scale, [out, g]),
    ...(params.zeroPoint ? [raw("zero_point", "I32", params.zeroPoint, [out, g])] : []),
    ...(params.nvfp4
      ? [raw("group_scale", "F32", params.nvfp4.groupScale, [out, g]), raw("nvfp4_global_scale", "F32", params.nvfp4.globalScale, [out])]
      : []),
    raw("dequantized", "F32", r.dequantized, [out, inF]),
    raw("row_loss", "F64", r.rowLoss, [out]),
  ];
}

/** A typed copy of tensor `name` of `f` (its bytes as `T`'s elements). */
function typed<T>(f: SafetensorsFile, name: string, make: (b: ArrayBuffer) => T): T {
  const bytes = f.readRaw(name).bytes;
  return make(bytes.slice().buffer);
}

/** The result a worker wrote for `job`, as runGptqJob would have returned it here (a failed factorisation: its NumericalError). */
function readGptqResult(file: string, job: GptqJob): GptqResult {
  const f = openPrivateSafetensors(file);
  if (f.metadata.failed !== undefined) throw new NumericalError(f.metadata.failed);
  const inF = job.weight.length / job.out;
  const scale = typed(f, "scale", (b) => new Float32Array(b));
  const groups = scale.length / job.out;
  const params: QParams = {
    groups,
    groupSize: Number(JSON.parse(f.metadata.group_size ?? "null")),
    scale,
    zeroPoint: f.tensors.has("zero_point") ? typed(f, "zero_point", (b) => new Int32Array(b)) : null,
    ...(f.tensors.has("group_scale")
      ? {
          nvfp4: {
            groupScale: typed(f, "group_scale", (b) => new Float32Array(b)),
            globalScale: typed(f, "nvfp4_global_scale", (b) => new Float32Array(b)),
          },
        }
      : {}),
  };
  const codes = f.info("codes").dtype === "I8" ? typed(f, "codes", (b) => new Int8Array(b)) : typed(f, "codes", (b) => new Uint8Array(b));
  const dequantized = typed(f, "dequantized", (b) => new Float32Array(b));
  if (codes.length !== job.out * inF || dequantized.length !== job.out * inF)
    throw new CheckpointFormatError(`${file}: not the GPTQ result of ${job.name}; ${RESTART}`);
  return {
    weight: { args: job.args, out: job.out, inF, codes, params },
    dequantized,
    loss: Number(JSON.parse(f.metadata.loss ?? "null")),
    rowLoss: typed(f, "row_loss", (b) => new Float64Array(b)),
  };
}

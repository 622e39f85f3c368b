/**
 * FP8 block-scaled source checkpoints, as DeepSeek-V3, R1, V3.1, Kimi-K2 and MiniMax-M2 are
 * published: `quantization_config: {quant_method: "fp8", fmt: "e4m3", weight_block_size: [Bo, Bi]}`,
 * each such Linear weight `F8_E4M3` [out, in] beside a float32 `<module>.weight_scale_inv`
 * [ceil(out / Bo), ceil(in / Bi)]; W[r, c] = e4m3(q[r, c]) * scale_inv[r / Bo, c / Bi]
 * (../shared/spec/deepseek_v3.md, last section). The checkpoint presents such a weight as a plain
 * one: float32 when read as float32, the model's torch_dtype when read as bytes.
 */
import { z } from "zod";
import { FP8_E4M3_MAX, f32ToBf16, f32ToF16, f32ToFp8e4m3, fp8e4m3ToF32 } from "../engine/dtype.js";
import { Tensor, numel } from "../engine/tensor.js";
import { CheckpointFormatError, InternalError } from "../errors.js";
import { DTYPE_BYTES, type RawTensor, type StoredLocation, type TensorInfo, rawToF32 } from "./safetensors.js";
import type { DecodedWeights, RawAccess, StoredTensor } from "./checkpoint.js";

export const SCALE_INV = ".weight_scale_inv";

/** What a checkpoint's FP8 block format says: the block and the dtype unquantized copies are written in. */
export interface Fp8BlockFormat {
  block: [number, number];
  /** the model's torch_dtype: what a weight presented as bytes is encoded to */
  dtype: "BF16" | "F16" | "F32";
}

const fp8Schema = z
  .object({
    quant_method: z.literal("fp8"),
    fmt: z.enum(["e4m3", "float8_e4m3fn"], { message: 'must be "e4m3" (or "float8_e4m3fn"): moecal reads FP8 E4M3 blocks' }),
    activation_scheme: z.literal("dynamic", { message: 'must be "dynamic" (static activation scales are not read)' }).optional(),
    weight_block_size: z.tuple([z.number().int().positive(), z.number().int().positive()], {
      message: "must be [rows, columns] of positive integers (per-tensor FP8 sources are not read)",
    }),
    modules_to_not_convert: z.array(z.string()).nullable().optional(),
  })
  .passthrough();

const TORCH_DTYPES: Record<string, Fp8BlockFormat["dtype"]> = { bfloat16: "BF16", float16: "F16", float32: "F32" };

/** config.json's FP8 `quantization_config` validated (a bad field is named); the output dtype from torch_dtype (default bfloat16). */
export function parseFp8BlockConfig(qc: unknown, torchDtype: unknown, where: string): Fp8BlockFormat {
  const r = fp8Schema.safeParse(qc);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue?.path.join(".") || "(root)";
    const absent = typeof qc === "object" && qc !== null && typeof issue?.path[0] === "string" && !(issue.path[0] in qc);
    throw new CheckpointFormatError(
      `${where}: quantization_config field "${field}": ${absent ? "missing (required)" : (issue?.message ?? "invalid")}`,
    );
  }
  return { block: r.data.weight_block_size, dtype: modelDType(torchDtype, where) };
}

/** config.json's torch_dtype as a safetensors dtype (default bfloat16): what decoded weights are written in. */
export function modelDType(torchDtype: unknown, where: string): Fp8BlockFormat["dtype"] {
  const dtype = TORCH_DTYPES[typeof torchDtype === "string" ? torchDtype : "bfloat16"];
  if (!dtype)
    throw new CheckpointFormatError(`${where}: field "torch_dtype": ${JSON.stringify(torchDtype)} is not bfloat16, float16 or float32`);
  return dtype;
}

const E4M3 = Float32Array.from({ length: 256 }, (_, b) => fp8e4m3ToF32(b));

/** An FP8 weight as stored: E4M3 codes [out, inF] and float32 scales per block of `block` (rows, columns). */
export interface Fp8Stored {
  codes: Uint8Array;
  scaleInv: Float32Array;
  out: number;
  inF: number;
  block: readonly [number, number];
}

/**
 * Rows [r0, r1) of an FP8 weight in float32: each code's value times its block's scale (exact in
 * float32), into `into` when it has their number of values (as rawToF32), else into a new array.
 */
export function fp8BlockRows(w: Fp8Stored, r0: number, r1: number, into?: Float32Array): Float32Array {
  const end = Math.min(r1, w.out);
  const n = (end - r0) * w.inF;
  const out = into?.length === n ? into : new Float32Array(n);
  decodeFp8Rows(w.codes.subarray(r0 * w.inF, end * w.inF), r0, w.scaleInv, w.inF, w.block, out);
  return out;
}

/**
 * FP8 codes of whole rows from row `r0` on, decoded into `out` (as many values): each code's value
 * times its block's scale, the float32 product (a store rounds it as Math.fround would). One scale a
 * block's run of columns, not index arithmetic a value (docs/performance.md, FP8 block weights).
 */
export function decodeFp8Rows(
  codes: Uint8Array,
  r0: number,
  scaleInv: Float32Array,
  inF: number,
  block: readonly [number, number],
  out: Float32Array,
): void {
  if (out.length !== codes.length || codes.length % inF !== 0)
    throw new InternalError(`decodeFp8Rows: ${codes.length} codes of rows of ${inF} into ${out.length} values`);
  const [bo, bi] = block;
  const cols = Math.ceil(inF / bi);
  for (let i = 0, r = r0; i < codes.length; i += inF, r++) {
    const srow = Math.floor(r / bo) * cols;
    for (let b = 0; b < cols; b++) {
      const s = scaleInv[srow + b] as number;
      const end = i + Math.min(inF, (b + 1) * bi);
      for (let c = i + b * bi; c < end; c++) out[c] = (E4M3[codes[c] as number] as number) * s;
    }
  }
}

/**
 * The FP8 weights of a checkpoint and their block scales, every one checked when the checkpoint
 * is opened (before any work): each `weight_scale_inv` beside an F8_E4M3 2-D weight, of shape
 * [ceil(out / Bo), ceil(in / Bi)], float32, finite and positive; each F8_E4M3 tensor with its scales.
 */
export class Fp8BlockWeights implements DecodedWeights {
  private readonly weights = new Set<string>();

  constructor(
    private readonly raw: RawAccess,
    readonly format: Fp8BlockFormat,
  ) {
    const names = new Set(raw.names());
    const where = (n: string): string => `${raw.dir}: tensor "${n}"`;
    const [bo, bi] = format.block;
    for (const n of names) {
      if (!n.endsWith(SCALE_INV)) continue;
      const w = `${n.slice(0, -SCALE_INV.length)}.weight`;
      if (!names.has(w)) throw new CheckpointFormatError(`${where(n)}: block scales without their weight "${w}"`);
      const wi = raw.info(w);
      if (wi.dtype !== "F8_E4M3" || wi.shape.length !== 2)
        throw new CheckpointFormatError(
          `${where(n)}: block scales for "${w}", which is ${wi.dtype} [${wi.shape.join(", ")}], not a 2-D F8_E4M3 weight`,
        );
      const [out, inF] = wi.shape as [number, number];
      const want = [Math.ceil(out / bo), Math.ceil(inF / bi)];
      const si = raw.info(n);
      if (si.dtype !== "F32" || si.shape.length !== 2 || si.shape[0] !== want[0] || si.shape[1] !== want[1])
        throw new CheckpointFormatError(
          `${where(n)}: ${si.dtype} [${si.shape.join(", ")}], expected F32 [${want.join(", ")}] (weight [${out}, ${inF}] in blocks of ${bo} x ${bi}, weight_block_size of config.json)`,
        );
      const s = rawToF32(raw.readRaw(n), where(n)).data;
      const bad = s.findIndex((v) => !(Number.isFinite(v) && v > 0));
      if (bad >= 0)
        throw new CheckpointFormatError(
          `${where(n)}: scale ${s[bad]} at block [${Math.floor(bad / (want[1] as number))}, ${bad % (want[1] as number)}] is not finite and positive`,
        );
      this.weights.add(w);
    }
    for (const n of names)
      if (raw.info(n).dtype === "F8_E4M3" && !this.weights.has(n))
        throw new CheckpointFormatError(`${where(n)}: F8_E4M3 without block scales (no "${n.replace(/\.weight$/, "")}${SCALE_INV}")`);
  }

  /** Whether `name` is an FP8 weight presented dequantized. */
  has(name: string): boolean {
    return this.weights.has(name);
  }

  /** Whether `name` is a block-scale tensor (hidden from the checkpoint's names; every one belongs to a weight). */
  hides(name: string): boolean {
    return name.endsWith(SCALE_INV);
  }

  names(stored: readonly string[]): string[] {
    return stored.filter((n) => !this.hides(n));
  }

  /** The weight as the checkpoint presents it: the torch_dtype's size. */
  info(name: string): TensorInfo {
    const t = this.raw.info(name);
    return { ...t, dtype: this.format.dtype, end: t.begin + numel(t.shape) * DTYPE_BYTES[this.format.dtype] };
  }

  stored(name: string): StoredTensor {
    return { fp8: this.blocks(name) };
  }

  /** The weight's codes and block scales as stored, read from disk. */
  private blocks(name: string): Fp8Stored {
    const [out, inF] = this.raw.info(name).shape as [number, number];
    return { codes: this.raw.readRaw(name).bytes, scaleInv: this.scales(name), out, inF, block: this.format.block };
  }

  /** The weight's block scales, read from disk. */
  private scales(name: string): Float32Array {
    const scaleName = `${name.slice(0, -".weight".length)}${SCALE_INV}`;
    return rawToF32(this.raw.readRaw(scaleName), `${this.raw.dir}: tensor "${scaleName}"`).data;
  }

  /** float32 values, into `into` when it has their number (else a new array, as Checkpoint.readF32 says) */
  readF32(name: string, into?: Float32Array): Tensor {
    const w = this.blocks(name);
    return new Tensor(fp8BlockRows(w, 0, w.out, into), [w.out, w.inF]);
  }

  /** Where the weight's codes lie, with its block scales (read now): a loading worker decodes them (load-pool.ts). */
  locate(name: string): StoredLocation | null {
    const at = this.raw.locate?.(name);
    return at ? { ...at, blocks: { scaleInv: this.scales(name), size: this.format.block } } : null;
  }

  private encode(w: Float32Array): Uint8Array {
    const d = this.format.dtype;
    const enc = d === "BF16" ? f32ToBf16(w) : d === "F16" ? f32ToF16(w) : w;
    return new Uint8Array(enc.buffer, enc.byteOffset, enc.byteLength);
  }

  readRaw(name: string): RawTensor {
    const w = this.blocks(name);
    return { dtype: this.format.dtype, shape: [w.out, w.inF], bytes: this.encode(fp8BlockRows(w, 0, w.out)) };
  }

  /** The presented bytes in pieces of whole block rows, each at most about `chunkBytes`. */
  *rawChunks(name: string, chunkBytes: number): Generator<Uint8Array> {
    const w = this.blocks(name);
    const step = Math.max(1, Math.floor(chunkBytes / (w.inF * DTYPE_BYTES[this.format.dtype])));
    for (let r = 0; r < w.out; r += step) yield this.encode(fp8BlockRows(w, r, r + step));
  }

  readRowsRaw(name: string, rows: Int32Array): RawTensor {
    const [, inF] = this.raw.info(name).shape as [number, number];
    const all = this.readF32(name).data;
    const w = new Float32Array(rows.length * inF);
    rows.forEach((r, i) => {
      w.set(all.subarray(r * inF, (r + 1) * inF), i * inF);
    });
    return { dtype: this.format.dtype, shape: [rows.length, inF], bytes: this.encode(w) };
  }
}

/**
 * A float32 weight [out, inF] stored as the published FP8 checkpoints store it: E4M3 codes and a
 * float32 scale per `block` x `block` (the block's absolute maximum / 448; 1 for an all-zero block).
 */
export function encodeFp8Blocks(w: Float32Array, out: number, inF: number, block: number): { codes: Uint8Array; scaleInv: Float32Array } {
  const cols = Math.ceil(inF / block);
  const scaleInv = new Float32Array(Math.ceil(out / block) * cols);
  for (let r = 0; r < out; r++)
    for (let c = 0; c < inF; c++) {
      const i = Math.floor(r / block) * cols + Math.floor(c / block);
      scaleInv[i] = Math.max(scaleInv[i] as number, Math.abs(w[r * inF + c] as number));
    }
  for (let i = 0; i < scaleInv.length; i++)
    scaleInv[i] = (scaleInv[i] as number) > 0 ? Math.fround((scaleInv[i] as number) / FP8_E4M3_MAX) : 1;
  const codes = new Uint8Array(out * inF);
  for (let r = 0; r < out; r++)
    for (let c = 0; c < inF; c++)
      codes[r * inF + c] = f32ToFp8e4m3(
        (w[r * inF + c] as number) / (scaleInv[Math.floor(r / block) * cols + Math.floor(c / block)] as number),
      );
  return { codes, scaleInv };
}

/**
 * How a model folder's weights are stored, from config.json's `quantization_config`: plain
 * (none), a compressed-tensors checkpoint (moecal's own output, read back dequantized), or FP8
 * blocks as DeepSeek-V3 / Kimi-K2 / MiniMax-M2 are published (presented dequantized on load).
 */
import { CheckpointFormatError } from "../errors.js";
import { Checkpoint } from "./checkpoint.js";
import { type ParsedQuantConfig, parseQuantizationConfig } from "./compressed-tensors.js";
import { type Fp8BlockFormat, SCALE_INV, modelDType, parseFp8BlockConfig } from "./fp8-blocks.js";
import { CompressedTensorsWeights } from "./compressed-tensors-source.js";

export type SourceQuantization =
  | { kind: "none" }
  /** `dtype`: the model's torch_dtype, what its quantized Linears are decoded to when read as bytes */
  | { kind: "compressed-tensors"; config: ParsedQuantConfig; dtype: Fp8BlockFormat["dtype"] }
  | { kind: "fp8-blocks"; format: Fp8BlockFormat };

const READ = ["compressed-tensors", "fp8"];

/** config.json's quantization_config as moecal reads it; an unknown quant_method is named. */
export function sourceQuantization(raw: Record<string, unknown>, where: string): SourceQuantization {
  const qc = raw.quantization_config;
  if (qc === undefined || qc === null) return { kind: "none" };
  const method = typeof qc === "object" ? (qc as { quant_method?: unknown }).quant_method : undefined;
  if (method === "fp8") return { kind: "fp8-blocks", format: parseFp8BlockConfig(qc, raw.torch_dtype ?? raw.dtype, where) };
  if (method === "compressed-tensors")
    return {
      kind: "compressed-tensors",
      config: parseQuantizationConfig(qc, where),
      dtype: modelDType(raw.torch_dtype ?? raw.dtype, where),
    };
  throw new CheckpointFormatError(
    `${where}: quantization_config field "quant_method": ${JSON.stringify(method ?? null)} is not a format moecal reads (${READ.map((m) => `"${m}"`).join(", ")})`,
  );
}

/**
 * The weights of a model folder under the model's names (`layout`: Checkpoint.presentLayout),
 * FP8 block weights presented dequantized (checked, with their scales, before any work), and with
 * `decodeQuantized` a compressed-tensors checkpoint's quantized Linears too (oneshot reads it as a
 * source; eval and inspect read its tensors as stored). F8_E4M3 tensors or block scales in a folder
 * whose config does not declare them are refused: read as plain values they would be wrong by their scales.
 */
export function openCheckpoint(
  dir: string,
  q: SourceQuantization,
  layout: { modelPrefix?: string | undefined; keep?: (stored: string) => boolean; decodeQuantized?: boolean } = {},
): Checkpoint {
  const ck = Checkpoint.open(dir);
  ck.assertNoAnomalies();
  ck.presentLayout(layout);
  if (q.kind === "fp8-blocks") {
    ck.presentFp8Blocks(q.format);
    return ck;
  }
  if (q.kind === "compressed-tensors" && layout.decodeQuantized) {
    // the config names stored modules; the checkpoint presents them under the model's names
    const p = layout.modelPrefix;
    const stored = (n: string): string => (p && n.startsWith("model.") ? `${p}${n.slice("model.".length)}` : n);
    ck.presentDecoded((raw) => new CompressedTensorsWeights(raw, { ...q.config, storedName: stored }, q.dtype));
    return ck;
  }
  if (q.kind === "none")
    for (const n of ck.names())
      if (n.endsWith(SCALE_INV) || ck.info(n).dtype === "F8_E4M3")
        throw new CheckpointFormatError(
          `${dir}: tensor "${n}" is FP8 block-scaled data, but config.json has no quantization_config saying so (quant_method "fp8", weight_block_size)`,
        );
  return ck;
}

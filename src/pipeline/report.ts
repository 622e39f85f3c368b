import type { LayerCoverage } from "../calibration/coverage.js";
import type { OutputFolder } from "../export/output.js";
import type { Fallback, QuantizedLinear } from "./quantize-layer.js";
import { coverageSvg } from "./coverage-svg.js";

export interface LayerReport {
  layer: number;
  /** routed tokens per expert: min and median (MoE layers) */
  min_routed: number | null;
  median_routed: number | null;
  /** experts whose Linear layers saw no calibration row */
  experts_without_rows: number;
  quantized_linears: number;
  fallbacks: number;
  /** sum of GPTQ loss estimates over the layer's Linears */
  gptq_loss: number;
}

/** moecal.json: what was done, on what, and what every expert saw. */
export interface OneshotReport {
  moecal_version: string;
  /** the model folder's name and content hash (never its absolute path: a published checkpoint must not reveal the user's folders) */
  model: { name: string; sha256: string };
  /** quantized without calibration data (round-to-nearest from the weights alone): no dataset, samples or coverage */
  data_free: boolean;
  /** the scheme, or the recipe's entries as PATTERNS=SCHEME */
  scheme: string;
  /**
   * the --scheme and --method values (or --recipe FILE) as given, a recipe file's text, its ignore
   * lists and GPTQ settings, and each entry as resolved: its targets, scheme, method and how many
   * Linears it quantized
   */
  recipe: {
    given: string[];
    file_text?: string;
    ignore: string[];
    gptq: { dampening?: number; blockSize?: number };
    entries: { targets: string[]; scheme: string; method: string; linears: number }[];
  };
  method: string;
  group_size: number | null;
  actorder: string | null;
  /** the dataset file's name and SHA-256 (null: data-free) */
  dataset: { name: string; sha256: string } | null;
  num_samples: number;
  tokens: number;
  max_seq_length: number | null;
  calibrate_all_experts: boolean | null;
  /**
   * how expert rows entered GPTQ's statistics; `all_token_fallbacks`: expert Linears that had no
   * routed row and so kept their all-token statistics (null: data-free)
   */
  expert_statistics: { setting: string; routed_weight: string; all_token_fallbacks: string[] } | null;
  /** a number, or decimal digits for a seed beyond 2^53 (null: data-free) */
  seed: number | string | null;
  ignore: string[];
  coverage: { layers: Record<string, LayerCoverage> };
  fallbacks: Fallback[];
  layers: LayerReport[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export function layerSummary(
  layer: number,
  cov: LayerCoverage | null,
  results: readonly Pick<QuantizedLinear, "loss">[],
  fallbacks: Fallback[],
): LayerReport {
  return {
    layer,
    min_routed: cov ? Math.min(...cov.routed) : null,
    median_routed: cov ? median(cov.routed) : null,
    experts_without_rows: cov ? cov.seen.filter((n) => n === 0).length : 0,
    quantized_linears: results.length,
    fallbacks: fallbacks.length,
    gptq_loss: results.reduce((a, r) => a + r.loss, 0),
  };
}

/** Experts with fewer routed tokens than this are marked in coverage.svg: 1% of a uniform share. */
function starvedThreshold(tokens: number, layers: Record<string, LayerCoverage>): number {
  const first = Object.values(layers)[0];
  const E = first?.routed.length ?? 1;
  const K = first ? first.routed.reduce((a, b) => a + b, 0) / Math.max(1, tokens) : 1;
  return Math.max(1, Math.round((0.01 * tokens * K) / E));
}

export async function writeReportFiles(out: OutputFolder, report: OneshotReport): Promise<void> {
  out.writeFile("moecal.json", `${JSON.stringify(report, null, 2)}\n`);
  const layers = report.coverage.layers;
  if (Object.keys(layers).length > 0)
    out.writeFile("coverage.svg", await coverageSvg(layers, { threshold: starvedThreshold(report.tokens, layers) }));
}

/** The final summary, as plain text lines. */
export function formatSummary(report: OneshotReport, output: string, run: { wallSeconds: number; peakRssMb: number }): string {
  const stats = report.expert_statistics;
  const how =
    report.data_free || !stats
      ? "data-free: round-to-nearest from the weights alone, no calibration data"
      : `${report.num_samples} samples / ${report.tokens} tokens, calibrate all experts: ${report.calibrate_all_experts}, expert statistics: ${stats.setting}, routed weight ${stats.routed_weight}`;
  const lines = [
    `wrote ${output} (${report.scheme}, ${report.method}, ${how})`,
    `wall time ${run.wallSeconds.toFixed(1)} s, peak RSS ${run.peakRssMb.toFixed(0)} MB`,
    "layer  min/median routed tokens per expert  experts without rows  fallbacks  GPTQ loss",
  ];
  for (const l of report.layers) {
    const routed = l.min_routed === null ? (report.data_free ? "no data (data-free)" : "dense") : `${l.min_routed} / ${l.median_routed}`;
    lines.push(
      `${String(l.layer).padStart(5)}  ${routed.padStart(35)}  ${String(l.experts_without_rows).padStart(20)}  ${String(l.fallbacks).padStart(9)}  ${l.gptq_loss.toExponential(3)}`,
    );
  }
  if (report.fallbacks.length) lines.push(`fallbacks: ${report.fallbacks.map((f) => `${f.module} (${f.reason})`).join(", ")}`);
  return lines.join("\n");
}

/** The wall time and peak memory of a run, read back from its printed summary (`formatSummary`), or null. */
export function runFromSummary(text: string): { wallSeconds: number; peakRssMb: number } | null {
  const m = /wall time ([\d.]+) s, peak RSS (\d+) MB/.exec(text);
  return m ? { wallSeconds: Number(m[1]), peakRssMb: Number(m[2]) } : null;
}

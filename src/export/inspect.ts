import path from "node:path";
import { type ServedScheme, servingProblems } from "./vllm-support.js";
import { Checkpoint } from "../io/checkpoint.js";
import { type DType, firstNonFiniteF32 } from "../io/safetensors.js";
import type { ModelConfig, ModelFamily } from "../models/family.js";
import { readModelConfig } from "../models/registry.js";
import { expectedTensors, layoutProblems } from "./layout.js";
import { inStoredOnlyLayer, storedName, storedOnlyLinears } from "../models/stored-layers.js";
import { fusedSchemeConflicts, oneWeightSets } from "../models/fused.js";
import { MoecalError, UsageError } from "../errors.js";
import { type QuantFormat, matchesAny } from "../quantization/scheme.js";
import { type ParsedQuantConfig, compressedTensorsSource, groupFor, parseQuantizationConfig } from "../io/compressed-tensors.js";

/** Scales outside [MIN, MAX] are flagged as extreme. */
const EXTREME_SCALE = { min: 1e-10, max: 1e4 } as const;

export interface InspectReport {
  dir: string;
  /** quantized modules per format */
  formats: Record<string, number>;
  quantized: number;
  ignored: number;
  tensors: number;
  problems: string[];
  /** what vLLM would do with it (slower kernels, or not loading it), by the rules oneshot warns with */
  warnings: string[];
}

const SCALE_DTYPES: DType[] = ["BF16", "F16", "F32", "F8_E4M3"];
/** Scale tensors checked for finite, positive values; global scales (448 * 6 / absmax) are large by design, so not for extremes. */
const SCALES = ["weight_scale", "input_scale", "weight_global_scale", "input_global_scale"] as const;

function formatOf(ck: Checkpoint, p: string): QuantFormat | null {
  if (ck.has(`${p}.weight_packed`)) {
    if (ck.info(`${p}.weight_packed`).dtype !== "U8") return "pack-quantized";
    return ck.has(`${p}.weight_scale`) && ck.info(`${p}.weight_scale`).dtype === "U8" ? "mxfp4-pack-quantized" : "nvfp4-pack-quantized";
  }
  if (!ck.has(`${p}.weight`)) return null;
  const d = ck.info(`${p}.weight`).dtype;
  return d === "I8" ? "int-quantized" : d === "F8_E4M3" ? "float-quantized" : null;
}

/**
 * Audit a compressed-tensors checkpoint (ours or another tool's): every quantized module's
 * tensors present with the shapes and dtypes its config group implies; scales finite, positive
 * and not extreme; no weight all zeros; no NaN or Inf anywhere; Linear weights left in float
 * named in `ignore`; the members of each module vLLM fuses (q/k/v, gate/up, a layer's routed
 * experts) under one scheme. Problems are collected, not thrown.
 */
export function inspectCheckpoint(dir: string): InspectReport {
  if (typeof dir !== "string" || dir === "")
    throw new UsageError(`inspectCheckpoint: the checkpoint folder must be a non-empty path, got ${typeof dir}`);
  const problems: string[] = [];
  const report: InspectReport = { dir, formats: {}, quantized: 0, ignored: 0, tensors: 0, problems, warnings: [] };
  let config: ModelConfig;
  let family: ModelFamily;
  let ck: Checkpoint;
  let cfg: ParsedQuantConfig;
  try {
    ({ family, config } = readModelConfig(dir));
    const c = config;
    // under the model's names (Qwen3.5's are stored under model.language_model.), as the loader reads them
    ck = Checkpoint.open(dir);
    ck.presentLayout({ modelPrefix: c.storedModelPrefix, keep: (n) => inStoredOnlyLayer(n, c) });
    report.tensors = ck.names().length;
    const qc = config.raw.quantization_config;
    if (!qc) {
      problems.push("config.json has no quantization_config: not a compressed-tensors checkpoint");
      return report;
    }
    const parsed = parseQuantizationConfig(qc, path.join(dir, "config.json"));
    cfg = { ...parsed, storedName: (n) => storedName(n, c) };
  } catch (e) {
    // a folder that cannot even be opened is reported, not thrown: that is what an audit is for
    if (!(e instanceof MoecalError)) throw e;
    problems.push(e.message);
    return report;
  }
  const model = family.build(config);
  const expected = expectedTensors(model, config);
  const layout = layoutProblems(ck, cfg, expected);
  // the model's Linear layers, and those of the layers stored but not run (multi-token prediction)
  const linears = new Set([...expected.linears, ...storedOnlyLinears(ck.names(), config, (n) => ck.info(n).shape)]);
  for (const l of layout) problems.push(l);
  // modules whose tensors are misshapen are not dequantized (their values cannot be read soundly)
  const misshapen = new Set(
    layout.map((m) =>
      m
        .slice(0, m.indexOf(":"))
        .replace(
          /\.(weight|weight_packed|weight_scale|weight_shape|weight_zero_point|input_scale|weight_global_scale|input_global_scale)$/,
          "",
        ),
    ),
  );
  const modules = new Set(
    ck
      .names()
      .filter((n) => n.endsWith(".weight_scale"))
      .map((n) => n.slice(0, -".weight_scale".length)),
  );
  for (const p of modules) {
    if (misshapen.has(p)) continue;
    const group = groupFor(cfg, p);
    const format = formatOf(ck, p);
    if (!group) {
      problems.push(`${p}: quantized tensors present but the module is ignored or matches no config group`);
      continue;
    }
    if (!format) {
      problems.push(`${p}: has weight_scale but neither weight_packed nor an I8 / F8_E4M3 weight`);
      continue;
    }
    if (format !== group.format) problems.push(`${p}: stored as ${format} but its config group says ${group.format}`);
    report.formats[format] = (report.formats[format] ?? 0) + 1;
    report.quantized++;
    if (format === "mxfp4-pack-quantized" && ck.info(`${p}.weight_scale`).dtype === "U8") {
      const e = ck.readRaw(`${p}.weight_scale`).bytes;
      const nan = e.indexOf(255);
      if (nan >= 0) problems.push(`${p}.weight_scale: E8M0 exponent 255 (NaN) at index ${nan}`);
    }
    for (const s of SCALES) {
      if (!ck.has(`${p}.${s}`) || !SCALE_DTYPES.includes(ck.info(`${p}.${s}`).dtype)) continue;
      const v = ck.readF32(`${p}.${s}`).data;
      const bad = firstNonFiniteF32(v);
      if (bad >= 0) problems.push(`${p}.${s}: non-finite value ${v[bad]} at index ${bad}`);
      const nonPos = v.findIndex((x) => x <= 0);
      if (nonPos >= 0) problems.push(`${p}.${s}: zero or negative value ${v[nonPos]} at index ${nonPos}`);
      const extreme = s.endsWith("global_scale")
        ? -1
        : v.findIndex((x) => Number.isFinite(x) && x > 0 && (x < EXTREME_SCALE.min || x > EXTREME_SCALE.max));
      if (extreme >= 0) problems.push(`${p}.${s}: extreme value ${v[extreme]} at index ${extreme}`);
    }
  }
  const unquantized: string[] = [];
  const src = (() => {
    try {
      return compressedTensorsSource(ck, cfg);
    } catch (e) {
      if (e instanceof MoecalError) problems.push(e.message);
      else throw e;
      return null;
    }
  })();
  for (const name of src?.names() ?? []) {
    const p = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
    if (p !== null && misshapen.has(p) && modules.has(p)) continue;
    let values: Float32Array;
    try {
      values = src?.readF32(name).data ?? new Float32Array();
    } catch (e) {
      if (!(e instanceof MoecalError)) throw e;
      problems.push(`${name}: ${e.message}`);
      continue;
    }
    const bad = firstNonFiniteF32(values);
    if (bad >= 0) problems.push(`${name}: non-finite value ${values[bad]} at flat index ${bad}`);
    if (p && modules.has(p) && values.every((x) => x === 0)) problems.push(`${p}: every weight is zero`);
    if (p !== null && linears.has(p) && !modules.has(p)) {
      report.ignored++;
      unquantized.push(p);
      if (!matchesAny(storedName(p, config), cfg.ignore))
        problems.push(`${p}: Linear left unquantized but not named in quantization_config.ignore`);
      if (ck.has(`${p}.weight`) && values.every((x) => x === 0)) problems.push(`${p}: every weight is zero`);
    }
  }
  // vLLM compares the config dicts of a fused module's members; a group's index names its dict
  const schemeOf = (n: string): string => {
    const g = modules.has(n) ? groupFor(cfg, n) : null;
    return g ? `config group ${cfg.groups.indexOf(g)}` : "unquantized";
  };
  const fused = family.fusedGroups([...modules, ...unquantized]);
  // what vLLM would make of it: oneshot's warnings, by the same rules, per config group
  const servedScheme = (n: string): ServedScheme | null => (misshapen.has(n) ? null : groupFor(cfg, n));
  report.warnings = servingProblems(model, fused, [...modules], servedScheme);
  for (const c of fusedSchemeConflicts(fused, schemeOf)) problems.push(c);
  // vLLM keeps one NVFP4 global scale per weight it runs (q/k/v; gate/up; an expert's gate/up)
  for (const set of oneWeightSets(fused)) {
    const values = set
      .filter((m) => !misshapen.has(m) && ck.has(`${m}.weight_global_scale`))
      .map((m) => [m, ck.readF32(`${m}.weight_global_scale`).data[0]] as const);
    if (new Set(values.map(([, v]) => v)).size > 1)
      problems.push(
        `${values.map(([m]) => m).join(", ")}: vLLM runs these as one weight with one global scale, but their weight_global_scale differ (${values.map(([, v]) => v).join(", ")})`,
      );
  }
  return report;
}

export function formatInspect(r: InspectReport): string {
  const lines = [
    `${r.dir}: ${r.tensors} tensors, ${r.quantized} quantized modules (${
      Object.entries(r.formats)
        .map(([f, n]) => `${f}: ${n}`)
        .join(", ") || "none"
    }), ${r.ignored} Linear layers unquantized`,
  ];
  if (r.problems.length === 0) lines.push("no problems found");
  else lines.push(`${r.problems.length} problem(s):`, ...r.problems.map((p) => `  - ${p}`));
  if (r.warnings.length) lines.push(`${r.warnings.length} serving warning(s):`, ...r.warnings.map((w) => `  - ${w}`));
  return lines.join("\n");
}

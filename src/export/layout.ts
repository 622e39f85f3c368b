/**
 * Every tensor of a compressed-tensors checkpoint checked against what `quantization_config` and
 * the model's config imply: the quantization tensors of each quantized Linear (shape and dtype,
 * zero points included), each unquantized tensor's shape and dtype, and nothing else in the folder.
 * `inspect` reports these problems; the loader (eval) refuses a checkpoint that has any.
 */
import type { Checkpoint } from "../io/checkpoint.js";
import { type DType, rawToInts } from "../io/safetensors.js";
import type { AnyModule } from "../nn/module.js";
import { Linear } from "../nn/layers.js";
import { type ParsedQuantConfig, groupFor } from "../io/compressed-tensors.js";
import type { ModelConfig } from "../models/family.js";
import { inStoredOnlyLayer } from "../models/stored-layers.js";

/** What the model expects: its parameters' names and shapes, which of them are Linear weights, and whether lm_head may be absent (tied). */
export interface ExpectedTensors {
  params: ReadonlyMap<string, readonly number[]>;
  linears: ReadonlySet<string>;
  tiedLmHead: boolean;
  /** tensors of layers stored but not run (multi-token prediction): present unquantized */
  storedOnly: (name: string) => boolean;
}

const FLOAT_DTYPES: readonly DType[] = ["F32", "BF16", "F16"];
const fmt = (shape: readonly number[]): string => `[${shape.join(", ")}]`;

interface Spec {
  dtypes: readonly DType[];
  shape: readonly number[];
}

/** The tensors a quantized Linear of shape [out, inF] carries under its config group. */
export function quantizedSpecs(group: NonNullable<ReturnType<typeof groupFor>>, out: number, inF: number): Map<string, Spec> {
  const w = group.weights;
  if (group.format === "mxfp4-pack-quantized")
    return new Map<string, Spec>([
      ["weight_packed", { dtypes: ["U8"], shape: [out, Math.ceil(inF / 2)] }],
      ["weight_scale", { dtypes: ["U8"], shape: [out, Math.ceil(inF / (w.groupSize ?? 32))] }],
    ]);
  if (group.format === "nvfp4-pack-quantized") {
    const specs = new Map<string, Spec>([
      ["weight_packed", { dtypes: ["U8"], shape: [out, Math.ceil(inF / 2)] }],
      ["weight_scale", { dtypes: ["F8_E4M3"], shape: [out, Math.ceil(inF / (w.groupSize ?? 16))] }],
      ["weight_global_scale", { dtypes: ["F32"], shape: [1] }],
    ]);
    if (group.inputActivations && group.inputActivations.dynamic !== true) specs.set("input_global_scale", { dtypes: ["F32"], shape: [1] });
    return specs;
  }
  if (w.strategy === "block") {
    const [br, bc] = w.blockStructure ?? [out, inF];
    const specs = new Map<string, Spec>([
      ["weight", { dtypes: ["F8_E4M3"], shape: [out, inF] }],
      ["weight_scale", { dtypes: FLOAT_DTYPES, shape: [Math.ceil(out / br), Math.ceil(inF / bc)] }],
    ]);
    if (group.inputActivations && !group.inputActivations.dynamic) specs.set("input_scale", { dtypes: FLOAT_DTYPES, shape: [1] });
    return specs;
  }
  const groups = w.strategy === "group" && w.groupSize ? inF / w.groupSize : 1;
  const scaleShape = w.strategy === "tensor" ? [1] : [out, w.strategy === "group" ? groups : 1];
  const specs = new Map<string, Spec>([["weight_scale", { dtypes: FLOAT_DTYPES, shape: scaleShape }]]);
  if (group.format === "pack-quantized") {
    specs.set("weight_packed", { dtypes: ["I32"], shape: [out, Math.ceil((inF * w.numBits) / 32)] });
    specs.set("weight_shape", { dtypes: ["I64", "I32"], shape: [2] });
    if (!w.symmetric) specs.set("weight_zero_point", { dtypes: ["I32"], shape: [Math.ceil((out * w.numBits) / 32), scaleShape[1] ?? 1] });
  } else {
    specs.set("weight", { dtypes: group.format === "int-quantized" ? ["I8"] : ["F8_E4M3"], shape: [out, inF] });
    if (!w.symmetric) specs.set("weight_zero_point", { dtypes: ["I8", "I32"], shape: scaleShape });
  }
  if (group.inputActivations && !group.inputActivations.dynamic) specs.set("input_scale", { dtypes: FLOAT_DTYPES, shape: [1] });
  return specs;
}

function checkSpec(ck: Checkpoint, name: string, spec: Spec, problems: string[]): void {
  if (!ck.has(name)) {
    problems.push(`${name}: missing (expected ${spec.dtypes.join(" or ")} ${fmt(spec.shape)})`);
    return;
  }
  const info = ck.info(name);
  if (!spec.dtypes.includes(info.dtype) || fmt(info.shape) !== fmt(spec.shape)) {
    problems.push(`${name}: ${info.dtype} ${fmt(info.shape)}, expected ${spec.dtypes.join(" or ")} ${fmt(spec.shape)}`);
  }
}

export function layoutProblems(ck: Checkpoint, cfg: ParsedQuantConfig, expected: ExpectedTensors): string[] {
  const problems = [...ck.anomalies];
  const accounted = new Set<string>();
  for (const [name, shape] of expected.params) {
    const p = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
    const group = p !== null && expected.linears.has(p) ? groupFor(cfg, p) : null;
    if (p !== null && group) {
      const [out, inF] = shape as [number, number];
      const w = group.weights;
      if ((w.strategy === "group" || w.strategy === "tensor_group") && w.groupSize && inF % w.groupSize !== 0)
        problems.push(`${p}: group size ${w.groupSize} does not divide its ${inF} inputs`);
      for (const [suffix, spec] of quantizedSpecs(group, out, inF)) {
        accounted.add(`${p}.${suffix}`);
        checkSpec(ck, `${p}.${suffix}`, spec, problems);
      }
      const ws = `${p}.weight_shape`;
      if (ck.has(ws) && fmt(ck.info(ws).shape) === "[2]" && ["I64", "I32"].includes(ck.info(ws).dtype)) {
        const v = rawToInts(ck.readRaw(ws), ws);
        if (v[0] !== out || v[1] !== inF) problems.push(`${ws}: holds ${fmt(v)}, the module is ${fmt([out, inF])}`);
      }
      continue;
    }
    if (name === "lm_head.weight" && expected.tiedLmHead && !ck.has(name)) continue;
    accounted.add(name);
    checkSpec(ck, name, { dtypes: name.endsWith("expert_bias") ? ["F32", "BF16", "F16"] : FLOAT_DTYPES, shape }, problems);
  }
  for (const n of ck.names()) {
    if (accounted.has(n) || n.endsWith("rotary_emb.inv_freq")) continue;
    if (expected.storedOnly(n)) {
      const d = ck.info(n).dtype;
      if (!FLOAT_DTYPES.includes(d)) problems.push(`${n}: ${d} in a multi-token-prediction layer, which is kept unquantized`);
      continue;
    }
    problems.push(`${n}: unexpected tensor (neither a parameter of the model nor a quantization tensor its config implies)`);
  }
  return problems;
}

/** What a model (built from its config, no weights loaded) expects a checkpoint to hold. */
export function expectedTensors(model: AnyModule, config: ModelConfig): ExpectedTensors {
  return {
    tiedLmHead: config.tieWordEmbeddings,
    storedOnly: (n) => inStoredOnlyLayer(n, config),
    params: new Map(model.namedParameters().map(([n, p]) => [n, p.shape] as const)),
    linears: new Set(
      model
        .namedModules()
        .filter(([, m]) => m instanceof Linear)
        .map(([n]) => n),
    ),
  };
}

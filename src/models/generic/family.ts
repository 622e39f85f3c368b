/**
 * A checkpoint whose `model_type` moecal has no family for, seen from its tensor names and shapes
 * alone, for the data-free path (nothing is run): the Linear layers are the 2-D `.weight` tensors
 * of the decoder layers (`model.layers.{i}.*`), the default ignore list is lm_head and the usual
 * router names, vLLM's fused groups are found by the usual names (q/k/v, gate/up, w1/w3,
 * q_a/kv_a, a layer's experts).
 */
import { z } from "zod";
import { InternalError, UsageError } from "../../errors.js";
import type { Checkpoint } from "../../io/checkpoint.js";
import { Embedding, Linear, RMSNorm, type TokenIds } from "../../nn/layers.js";
import { Module, ModuleList } from "../../nn/module.js";
import { mapWeightsByName } from "../../nn/weights.js";
import { deepseekV3FusedGroups } from "../deepseek_v3/quant-defaults.js";
import type { CausalLM, CausalLMInput, CausalLMOutput, ModelConfig, ModelFamily } from "../family.js";
import type { FusedGroup } from "../fused.js";
import { mixtralFusedGroups } from "../mixtral/quant-defaults.js";
import type { Tensor } from "../../engine/tensor.js";
import { fieldFailure, parseConfigFields } from "../config-fields.js";

/** Router and gate names of the known MoE families, family-independently. */
export const GENERIC_DEFAULT_IGNORE: readonly string[] = [
  "lm_head",
  "re:.*(mlp|block_sparse_moe|moe|feed_forward)\\.gate$",
  "re:.*\\.router(\\.layer)?$",
  "re:.*shared_expert_gate$",
];

/** A module holding whatever tensors the checkpoint has under its name; it cannot run. */
class StoredModule extends Module<Tensor, Tensor> {
  readonly className = "StoredModule";

  declare(name: string, shape: number[]): void {
    this.declareParam(name, shape);
  }
  attach(name: string, m: Module<Tensor, Tensor> | Module<TokenIds, Tensor>): void {
    this.addModule(name, m as Module<Tensor, Tensor>);
  }
  async forward(): Promise<Tensor> {
    throw new UsageError("a model moecal has no family for is only quantized data-free; it cannot be run");
  }
}

/** The module tree of the tensors under `prefix`: a Linear for each 2-D `.weight` (with its `.bias`), plain parameters otherwise. */
function storedTree(tensors: ReadonlyMap<string, number[]>, prefix: string, linearsAllowed: boolean): StoredModule {
  const root = new StoredModule();
  const modules = new Map<string, StoredModule>([["", root]]);
  const moduleAt = (path: string): StoredModule => {
    const have = modules.get(path);
    if (have) return have;
    const dot = path.lastIndexOf(".");
    const m = new StoredModule();
    moduleAt(dot < 0 ? "" : path.slice(0, dot)).attach(path.slice(dot + 1), m);
    modules.set(path, m);
    return m;
  };
  const names = [...tensors.keys()].filter((n) => n.startsWith(`${prefix}.`)).map((n) => n.slice(prefix.length + 1));
  const linear = new Set(
    names
      .filter((n) => linearsAllowed && n.endsWith(".weight") && tensors.get(`${prefix}.${n}`)?.length === 2)
      .map((n) => n.slice(0, -".weight".length)),
  );
  for (const p of linear) {
    const [out, inF] = tensors.get(`${prefix}.${p}.weight`) as [number, number];
    const dot = p.lastIndexOf(".");
    const bias = tensors.get(`${prefix}.${p}.bias`);
    moduleAt(dot < 0 ? "" : p.slice(0, dot)).attach(
      p.slice(dot + 1),
      new Linear(inF, out, { bias: bias?.length === 1 && bias[0] === out }),
    );
  }
  for (const n of names) {
    const dot = n.lastIndexOf(".");
    const owner = dot < 0 ? "" : n.slice(0, dot);
    if (linear.has(owner) && (n.endsWith(".weight") || n.endsWith(".bias"))) continue;
    moduleAt(owner).declare(n.slice(dot + 1), tensors.get(`${prefix}.${n}`) as number[]);
  }
  return root;
}

export interface GenericConfig extends ModelConfig {
  /** the checkpoint's tensors: name -> shape */
  tensors: ReadonlyMap<string, number[]>;
}

/** The decoder skeleton over the stored tensors: embeddings, layers, final norm, lm_head. */
class StoredCausalLM extends Module<CausalLMInput, CausalLMOutput> implements CausalLM {
  readonly className = "StoredCausalLM";

  constructor(c: GenericConfig) {
    super();
    const shape = (n: string): number[] | undefined => c.tensors.get(n);
    const model = new StoredModule();
    const [V, H] = (shape("model.embed_tokens.weight") ?? [c.vocabSize, 1]) as [number, number];
    model.attach("embed_tokens", new Embedding(V, H));
    model.attach(
      "layers",
      new ModuleList(Array.from({ length: c.numHiddenLayers }, (_, i) => storedTree(c.tensors, `model.layers.${i}`, true))),
    );
    if (shape("model.norm.weight")) model.attach("norm", new RMSNorm(H, 1e-6));
    this.addModule("model", model);
    if (shape("lm_head.weight") || c.tieWordEmbeddings) this.addModule("lm_head", new Linear(H, V));
  }

  get model(): CausalLM["model"] {
    const m = this.child<StoredModule>("model");
    return {
      embed: () => Promise.reject(new InternalError("a stored model cannot embed")),
      layers: m.child("layers"),
      norm: m.hasChild("norm") ? m.child("norm") : m,
    };
  }
  get lm_head(): Linear {
    return this.child("lm_head");
  }
  async forward(): Promise<CausalLMOutput> {
    throw new UsageError("a model moecal has no family for is only quantized data-free; it cannot be run");
  }
}

const schema = z
  .object({
    model_type: z.string(),
    num_hidden_layers: z.number().int().positive().optional(),
    tie_word_embeddings: z.boolean().optional(),
    vocab_size: z.number().int().positive().optional(),
    max_position_embeddings: z.number().int().positive().optional(),
  })
  .passthrough();

/** Every fused group the known families' rules find (q/k/v, gate/up, a layer's experts by either naming, q_a/kv_a), once each. */
function genericFusedGroups(linearNames: readonly string[]): FusedGroup[] {
  const groups = new Map<string, FusedGroup>();
  for (const g of [...deepseekV3FusedGroups(linearNames), ...mixtralFusedGroups(linearNames)])
    if (!groups.has(g.module)) groups.set(g.module, g);
  return [...groups.values()];
}

/** The family of a checkpoint moecal does not know, from its config.json and its tensors (names and shapes). */
export function genericFamily(ck: Checkpoint): ModelFamily {
  const tensors = new Map(ck.names().map((n) => [n, ck.info(n).shape] as const));
  const layerIndices = [...tensors.keys()]
    .map((n) => /^model\.layers\.(\d+)\./.exec(n)?.[1])
    .filter((x) => x !== undefined)
    .map(Number);
  const stored = layerIndices.length ? Math.max(...layerIndices) + 1 : 0;
  const experts = [...tensors.keys()]
    .map((n) => /\.experts\.(\d+)\./.exec(n)?.[1])
    .filter((x) => x !== undefined)
    .map(Number);
  return {
    modelType: "(generic)",
    parseConfig: (json, where): GenericConfig => {
      const c = parseConfigFields(schema, json, where, {});
      const L = c.num_hidden_layers ?? stored;
      if (L > stored) fieldFailure(where)("num_hidden_layers", `${L} layers, but the checkpoint holds model.layers.0-${stored - 1}`);
      return {
        modelType: c.model_type,
        numHiddenLayers: L,
        storedLayers: stored,
        numExperts: experts.length ? Math.max(...experts) + 1 : 0,
        numExpertsPerTok: 0,
        vocabSize: c.vocab_size ?? tensors.get("model.embed_tokens.weight")?.[0] ?? 0,
        maxPositionEmbeddings: c.max_position_embeddings ?? 0,
        tieWordEmbeddings: c.tie_word_embeddings ?? !tensors.has("lm_head.weight"),
        raw: json as Record<string, unknown>,
        tensors,
      };
    },
    build: (config) => new StoredCausalLM(config as GenericConfig) as unknown as CausalLM,
    mapWeights: (config, expected, available) => mapWeightsByName(config, expected, available),
    defaultIgnore: GENERIC_DEFAULT_IGNORE,
    fusedGroups: genericFusedGroups,
    isMoeLayer: (config, layer) =>
      [...(config as GenericConfig).tensors.keys()].some((n) => n.startsWith(`model.layers.${layer}.`) && n.includes(".experts.")),
    randomPreset: {},
  };
}

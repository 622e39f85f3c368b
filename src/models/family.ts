/**
 * What the rest of moecal needs from a model family: its config, its module tree, its weight
 * names, and its quantization defaults. Nothing above `src/models/` names a family; it asks the
 * registry (`registry.ts`) for the family of a config.json's `model_type`.
 */
import type { Tensor } from "../engine/tensor.js";
import type { Linear, TokenIds } from "../nn/layers.js";
import type { Module, ModuleList } from "../nn/module.js";
import type { WeightMapping } from "../nn/weights.js";
import type { FusedGroup } from "./fused.js";

/** The config fields every family has (names as moecal spells them; `raw` is config.json as read). */
export interface ModelConfig {
  modelType: string;
  numHiddenLayers: number;
  /**
   * decoder layers stored in the checkpoint, when it holds more than the causal LM runs (GLM's
   * multi-token-prediction layers, `model.layers.{numHiddenLayers + i}`, copied unchanged)
   */
  storedLayers?: number;
  /**
   * name prefixes of tensors stored beside the model and never run (Qwen3-Next's `mtp.`, Qwen3.5's
   * `model.visual.`): copied unchanged, their Linear layers named in `ignore`
   */
  storedOnlyPrefixes?: readonly string[];
  /** where the checkpoint stores the model's `model.` tensors (Qwen3.5: "model.language_model."); absent: "model." */
  storedModelPrefix?: string;
  /** routed experts per MoE layer */
  numExperts: number;
  /** experts each token is routed to */
  numExpertsPerTok: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  raw: Record<string, unknown>;
}

export interface CausalLMInput {
  ids: TokenIds;
  outputHiddenStates?: boolean;
}

export interface CausalLMOutput {
  /** [B, S, V] */
  logits: Tensor;
  /** hiddenStates[0] = the input of layer 0, [i] = the output of layer i-1 (when requested) */
  hiddenStates: Tensor[];
}

/** A decoder layer: hidden states in, hidden states out. */
export type DecoderLayer = Module<Tensor, Tensor>;

/** A causal language model as the pipelines see it: embeddings, decoder layers, final norm, lm_head. */
export interface CausalLM extends Module<CausalLMInput, CausalLMOutput> {
  readonly model: {
    /** the input of layer 0 (embeddings, scaled where the family scales them) */
    embed(ids: TokenIds): Promise<Tensor>;
    readonly layers: ModuleList<DecoderLayer>;
    readonly norm: Module<Tensor, Tensor>;
  };
  readonly lm_head: Linear;
}

export interface ModelFamily {
  /** config.json's `model_type` */
  readonly modelType: string;
  /** Validate a parsed config.json (errors name the field); sizes checked before any module is built. */
  parseConfig(json: unknown, where: string): ModelConfig;
  /** The module tree (parameters declared, not loaded). */
  build(config: ModelConfig): CausalLM;
  /** Pure: checkpoint tensors (name, shape) against the model's parameters. */
  mapWeights(
    config: ModelConfig,
    expected: ReadonlyArray<readonly [string, readonly number[]]>,
    available: ReadonlyMap<string, readonly number[]>,
  ): WeightMapping;
  /** Linear layers never quantized by default (lm_head, the router gates). */
  readonly defaultIgnore: readonly string[];
  /** The groups of Linear layers that vLLM runs as one module. */
  fusedGroups(linearNames: readonly string[]): FusedGroup[];
  /** Whether decoder layer `layer` has the MoE block (else a dense MLP). */
  isMoeLayer(config: ModelConfig, layer: number): boolean;
  /** A tiny config.json of the family (byte-level vocabulary of 260, as the bundled tokenizer's), for `random-model --family`. */
  readonly randomPreset: Readonly<Record<string, unknown>>;
}

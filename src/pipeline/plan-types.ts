/** What `moecal plan` reports (plan.ts computes it): per layer and for the whole run. */
import type { ExpertGroups } from "./plan-groups.js";

/** The routed experts' part of a layer's plan. */
export interface ExpertWork {
  count: number;
  /** their calibration arithmetic (every expert on its rows), of which `shared_flops` is the gate/up Gram product they share */
  calibrate_flops: number;
  shared_flops: number;
  gptq_flops: number;
  /** their routed outputs in propagation (the routed sums) */
  routed_flops: number;
  /** their weights: how many, as read and as written */
  weights: number;
  read_bytes: number;
  write_bytes: number;
  /** the layer's MoE calls streamed to the work folder: each token's input, expert ids and weights */
  stream_bytes: number;
  /** each routed pair's weighted output (a distributed job's routed rows), and the routed sums */
  routed_rows_bytes: number;
  sums_bytes: number;
}

/** A layer's Linears outside its routed experts (attention, router, shared experts; a dense layer's all): their GPTQ, the largest one's, and their Hessians' bytes (one copy each). */
export interface NonExpertWork {
  /** the layer's inputs, 4 T H bytes (as large as its outputs) */
  input_bytes: number;
  gptq_flops: number;
  gptq_max_flops: number;
  hessian_bytes: number;
}

export interface LayerPlan {
  layer: number;
  moe: boolean;
  read_bytes: number;
  write_bytes: number;
  /** bytes by part; their sum and the baseline make the layer's peak */
  memory: {
    /** the layer's weights in float32 and as read (the checkpoint's bytes) */
    parameters: number;
    hidden_states: number;
    activations: number;
    hessians: number;
    gptq: number;
    /** GPTQ's worker threads, and the loading workers (nn/weights.ts) from the first layer large enough to start them */
    workers: number;
    /** codes (a byte per quantized weight) and the layer's output tensors, held twice while its file is written */
    outputs: number;
    /** the previous layer's weights (unloaded, not yet collected), the scratch pool's piece buffer and the attention's scratch arrays */
    retained: number;
  };
  peak_memory_bytes: number;
  /** an MoE layer run in groups of routed experts (the memory above is the grouped run's); null: run whole */
  expert_groups: ExpertGroups | null;
  /** an MoE layer's routed experts, the share of its work and bytes a distributed run's jobs take (plan-distributed.ts) */
  experts: ExpertWork | null;
  non_expert: NonExpertWork;
  flops: { calibrate: number; propagate: number; gptq: number };
  seconds: number;
}

export interface Plan {
  model: string;
  scheme: string;
  method: string;
  samples: number;
  tokens: number;
  /** shards of the calibration samples (--shard-tokens): a distributed run's token-shard jobs per phase */
  shards: number;
  layers: LayerPlan[];
  peak_memory_bytes: number;
  /**
   * memory of the steps outside the layers, beside the process's own: embedding the samples (one
   * sample's rows as read and in float32, its output and the copy on its way to the work folder:
   * never the whole table) and assembling the output (one layer's file read back at a time, the
   * piece buffer of tensors copied unchanged, the shard's copy buffer)
   */
  phases: { embed: number; assemble: number };
  /** the process itself (Node.js and onnxruntime): its size now plus what it grows by once it runs, at least PLAN_MODEL's baseline */
  baseline_bytes: number;
  /**
   * output plus the resume state at its largest (every layer file and two layers' hidden states)
   * plus the shard being assembled (its data is spooled to a temporary file, then copied behind its header)
   */
  disk_bytes: number;
  disk: { output: number; resume_state: number; shard_assembly: number };
  seconds: number;
  /** the engine's GEMM rate measured for the estimate (GFLOP/s; 0 for a data-free run, which does no products) */
  gemm_gflops: number;
  /** a data-free run: its worker threads, the bytes one job holds at most, the source bytes read; null for a calibrated run */
  data_free: { workers: number; job_bytes: number; source_bytes: number } | null;
}

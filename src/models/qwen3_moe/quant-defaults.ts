/**
 * Quantization defaults for Qwen3-MoE: the Linear layers never quantized, and the groups of Linear
 * layers that vLLM runs as one module (vllm/model_executor/models/qwen3_moe.py).
 */

/** Never quantized: vLLM builds the router `mlp.gate` without a quantization config (never an expert's gate_proj). */
export const QWEN3_MOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.gate$"];

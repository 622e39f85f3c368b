/**
 * Quantization defaults for GLM-4.5 MoE: the Linear layers never quantized, and the groups of
 * Linear layers that vLLM runs as one module (vllm/model_executor/models/glm4_moe.py).
 */

/** Never quantized: vLLM keeps the router `mlp.gate` (and its e_score_correction_bias) in float32. */
export const GLM4_MOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.gate$"];

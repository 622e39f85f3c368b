/**
 * Quantization defaults for AFMoE: the Linear layers never quantized. vLLM keeps the router
 * gate in float32; lm_head stays in the checkpoint dtype, as in published Trinity quantizations.
 */
export const AFMOE_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*mlp\\.router\\.gate$"];

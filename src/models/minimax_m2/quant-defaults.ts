/**
 * Quantization defaults for MiniMax-M2: the Linear layers never quantized, and the groups of
 * Linear layers that vLLM runs as one module (vllm/model_executor/models/minimax_m2.py at 01d99586:
 * `qkv_proj` = q/k/v, one FusedMoE per layer from w1/w3/w2: Mixtral's rules, reused).
 */
export { mixtralFusedGroups as miniMaxM2FusedGroups } from "../mixtral/quant-defaults.js";

/** Never quantized: vLLM builds the router `block_sparse_moe.gate` in float32 without a quant config (the bias is not a Linear). */
export const MINIMAX_M2_DEFAULT_IGNORE: readonly string[] = ["lm_head", "re:.*block_sparse_moe\\.gate$"];

/**
 * The all-experts calibration pass of a Qwen3-30B-A3B-shaped MoE block (H 2048, 128 experts,
 * top-8, Im 768, softmax router with norm_topk_prob), random weights: our fast path and our
 * per-expert path, each cold and warm, and the same llm-compressor-style loop in PyTorch (eager,
 * a Hessian hook on every expert Linear) when python3-torch is installed. `npm run bench:qwen3`
 * runs it alone; `npm run bench` includes it.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CalibrationQwen3MoeSparseMoeBlock } from "../src/calibration/qwen3-moe.js";
import { attachHessianObservers } from "../src/calibration/observers.js";
import { Tensor } from "../src/engine/tensor.js";
import { parseQwen3MoeConfig } from "../src/models/qwen3_moe/config.js";
import { Qwen3MoeSparseMoeBlock } from "../src/models/qwen3_moe/modeling.js";
import { fillNormal, rng } from "../src/util/random.js";
import { torchPeer } from "./nano-block.js";

export const QWEN3_30B_A3B = { hidden: 2048, experts: 128, topk: 8, im: 768 } as const;

export interface Qwen3BlockResult {
  shape: typeof QWEN3_30B_A3B;
  tokens: number;
  tokens_per_s: Record<string, number | null>;
  tokens_per_s_cold: Record<string, number | null>;
  torch: string | null;
}

export async function benchQwen3Block(tokens: number, work: string): Promise<Qwen3BlockResult> {
  const S = QWEN3_30B_A3B;
  const config = parseQwen3MoeConfig({
    model_type: "qwen3_moe",
    hidden_size: S.hidden,
    num_experts: S.experts,
    num_experts_per_tok: S.topk,
    moe_intermediate_size: S.im,
    norm_topk_prob: true,
    num_hidden_layers: 1,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    head_dim: 128,
  });
  const block = new Qwen3MoeSparseMoeBlock(config);
  const next = rng(7);
  for (const [, p] of block.namedParameters())
    p.value = new Tensor(fillNormal(new Float32Array(p.shape.reduce((a, b) => a * b, 1)), next, 0.02), p.shape);
  const x = new Tensor(fillNormal(new Float32Array(tokens * S.hidden), next, 1), [1, tokens, S.hidden]);
  const tps: Record<string, number | null> = {};
  const tpsCold: Record<string, number | null> = {};
  for (const fastPath of [true, false]) {
    // warm-up on 64 tokens with a throw-away module: onnxruntime sessions exist before timing
    await new CalibrationQwen3MoeSparseMoeBlock(block, { calibrateAllExperts: true, fastPath }).call(
      new Tensor(x.data.subarray(0, 64 * S.hidden), [1, 64, S.hidden]),
    );
    for (const pass of ["cold", "warm"] as const) {
      const calib = new CalibrationQwen3MoeSparseMoeBlock(block, { calibrateAllExperts: true, fastPath });
      const obs = attachHessianObservers(calib, (n) => n.startsWith("experts."));
      const t0 = performance.now();
      await calib.call(x);
      (pass === "cold" ? tpsCold : tps)[fastPath ? "fast" : "per_expert"] = tokens / ((performance.now() - t0) / 1000);
      obs.remove();
    }
  }
  // the PyTorch peer on the same weights and input
  const dir = path.join(work, "qwen3-block");
  fs.mkdirSync(dir, { recursive: true });
  const manifest: Record<string, { shape: number[]; file: string }> = {};
  const put = (name: string, t: Tensor): void => {
    fs.writeFileSync(path.join(dir, `${name}.f32`), new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    manifest[name] = { shape: [...t.shape], file: `${name}.f32` };
  };
  for (const [name, p] of block.namedParameters()) if (p.value) put(name, p.value);
  put("x", x);
  const m = path.join(dir, "manifest.json");
  fs.writeFileSync(m, JSON.stringify({ config: { ...S, router: "softmax", renormalize: true, gptq: false }, tensors: manifest }));
  const torch = torchPeer(m);
  tps.torch_seed = torch ? tokens / torch.calib_seconds : null;
  tpsCold.torch_seed = torch?.calib_seconds_cold ? tokens / torch.calib_seconds_cold : null;
  return { shape: S, tokens, tokens_per_s: tps, tokens_per_s_cold: tpsCold, torch: torch?.torch ?? null };
}

/** The result as table rows (tokens/s warm / cold, and the fast path's ratios). */
export function qwen3Rows(r: Qwen3BlockResult): string[] {
  const f = (v: number | null | undefined): string => (v === null || v === undefined ? "n/a" : v.toFixed(1));
  const both = (k: string): string => `${f(r.tokens_per_s[k])} / ${f(r.tokens_per_s_cold[k])}`;
  const ratio = (a: number | null | undefined, b: number | null | undefined): string => (a && b ? `${(a / b).toFixed(1)}x` : "n/a");
  const t = r.tokens_per_s;
  const c = r.tokens_per_s_cold;
  return [
    `| calibration pass, Qwen3-30B-A3B-shaped block (H 2048, E 128, top-8, Im 768), ${r.tokens} tokens, all experts + Hessians (warm / cold): fast path | ${both("fast")} tokens/s | |`,
    `| same, our per-expert path | ${both("per_expert")} tokens/s | fast ${ratio(t.fast, t.per_expert)} / ${ratio(c.fast, c.per_expert)} |`,
    `| same, llm-compressor-style loop in PyTorch (${r.torch ?? "not run"}) | ${both("torch_seed")} tokens/s | fast ${ratio(t.fast, t.torch_seed)} / ${ratio(c.fast, c.torch_seed)} |`,
  ];
}

if (process.argv[1]?.endsWith("qwen3-block.js")) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-bench-qwen3-"));
  const r = await benchQwen3Block(Number(process.env.BENCH_QWEN3_TOKENS ?? 1024), work);
  fs.rmSync(work, { recursive: true, force: true });
  console.log(JSON.stringify(r));
  for (const line of qwen3Rows(r)) console.log(line);
}

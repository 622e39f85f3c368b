/**
 * A Trinity-Nano-shaped MoE block (H 1024, E 128, K 8, Im 256, one shared expert) with random
 * weights, shared by the calibration and GPTQ benchmarks, and written to disk so the PyTorch
 * peers run on the same weights and input.
 */
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { Tensor } from "../src/engine/tensor.js";
import { AfmoeMoE, parseAfmoeConfig, type AfmoeConfig } from "../src/models/afmoe/index.js";
import { BUNDLED_MODEL, PACKAGE_ROOT } from "../src/paths.js";
import { fillNormal, rng } from "../src/util/random.js";

export const NANO = { hidden: 1024, experts: 128, topk: 8, im: 256, shared: 1 } as const;

export function nanoConfig(): AfmoeConfig {
  const raw = JSON.parse(fs.readFileSync(path.join(BUNDLED_MODEL, "config.json"), "utf8")) as Record<string, unknown>;
  return parseAfmoeConfig({
    ...raw,
    hidden_size: NANO.hidden,
    num_experts: NANO.experts,
    num_experts_per_tok: NANO.topk,
    moe_intermediate_size: NANO.im,
    num_shared_experts: NANO.shared,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    head_dim: 128,
    intermediate_size: 3072,
  });
}

/** The block with random weights (std 0.02; router bias small), and an input [1, tokens, H] (std 1). */
export function nanoBlock(tokens: number, seed = 1): { config: AfmoeConfig; block: AfmoeMoE; x: Tensor } {
  const config = nanoConfig();
  const block = new AfmoeMoE(config);
  const next = rng(seed);
  for (const [name, p] of block.namedParameters()) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    p.value = new Tensor(fillNormal(new Float32Array(n), next, name === "expert_bias" ? 1e-3 : 0.02), p.shape);
  }
  const x = new Tensor(fillNormal(new Float32Array(tokens * NANO.hidden), next, 1), [1, tokens, NANO.hidden]);
  return { config, block, x };
}

/** Raw float32 files plus a manifest (name, shape, file) for the PyTorch scripts. */
export function writeBlock(dir: string, block: AfmoeMoE, x: Tensor): string {
  fs.mkdirSync(dir, { recursive: true });
  const manifest: Record<string, { shape: number[]; file: string }> = {};
  const put = (name: string, t: Tensor): void => {
    const file = `${name}.f32`;
    fs.writeFileSync(path.join(dir, file), new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    manifest[name] = { shape: [...t.shape], file };
  };
  for (const [name, p] of block.namedParameters()) if (p.value) put(name, p.value);
  put("x", x);
  const m = path.join(dir, "manifest.json");
  fs.writeFileSync(
    m,
    JSON.stringify({
      config: { hidden: NANO.hidden, experts: NANO.experts, topk: NANO.topk, im: NANO.im, route_scale: block.config.routeScale },
      tensors: manifest,
    }),
  );
  return m;
}

/**
 * bench/torch_seed.py on a block written by writeBlock: the seed's calibration pass and a
 * per-expert GPTQ in PyTorch (Debian's python3-torch), OpenBLAS free to pick its own kernel.
 * null when no Python with torch runs it.
 */
export function torchPeer(
  manifest: string,
): { calib_seconds: number; calib_seconds_cold?: number; gptq_seconds: number; torch: string } | null {
  for (const py of ["/usr/bin/python3", "python3"]) {
    const env = { ...process.env };
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    const r = spawnSync(py, [path.join(PACKAGE_ROOT, "bench", "torch_seed.py"), manifest], { encoding: "utf8", env, maxBuffer: 1 << 20 });
    if (r.status === 0)
      return JSON.parse(r.stdout.trim().split("\n").pop() as string) as {
        calib_seconds: number;
        calib_seconds_cold?: number;
        gptq_seconds: number;
        torch: string;
      };
  }
  return null;
}

/**
 * Every bad input we try, what the user runs, and what they must get. The test runs each case;
 * `npm run doc:bad-inputs` writes the table in docs/robustness.md from real runs of the same cases.
 */
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import type { NamedRaw } from "../../src/io/writer.js";
import { ROOT, TINY } from "../helpers.js";
import { type BadInputCase, canMountTmpfs, dataset, modelCopy, quick, withHeader, poisoned } from "./bad-inputs.fixtures.js";
import { TRUST_CASES } from "./bad-inputs.trust.js";
import { ROUND2_CASES } from "./bad-inputs.round2.js";
import { FP8_CASES } from "./bad-inputs.fp8.js";

/** A small oneshot of the bundled model with a recipe file (no --method: the file gives it). */
const withRecipe = (d: string, file: string, extra: string[] = []): string[] => [
  "oneshot",
  "--model",
  TINY,
  "--recipe",
  file,
  "--num-samples",
  "1",
  "--max-seq-length",
  "8",
  "--output",
  path.join(d, "out"),
  ...extra,
];

export { type BadInputCase, CLI, cleanupCase, runCase, snapshot } from "./bad-inputs.fixtures.js";

export const BAD_INPUTS: BadInputCase[] = [
  {
    name: "truncated safetensors file",
    setup: (d) => quick(modelCopy(d, { shard1: (b) => b.subarray(0, b.length - 1000) }), d),
    exitCode: 1,
    message: /model-00001-of-00002.safetensors: tensor "[^"]+": data_offsets \[\d+, \d+\] outside the data section/,
  },
  {
    name: "header length larger than the file",
    setup: (d) =>
      quick(
        modelCopy(d, {
          shard1: (b) => {
            const c = Buffer.from(b);
            c.writeBigUInt64LE(BigInt(b.length * 2), 0);
            return c;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /model-00001-of-00002.safetensors: header length \d+ is beyond the end of the \d+-byte file/,
  },
  {
    name: "header that is not JSON",
    setup: (d) =>
      quick(
        modelCopy(d, {
          shard1: (b) => {
            const c = Buffer.from(b);
            c.write("#", 8);
            return c;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /model-00001-of-00002.safetensors: header is not valid JSON/,
  },
  {
    name: "unknown dtype",
    setup: (d) =>
      quick(
        modelCopy(d, {
          shard1: (b) =>
            withHeader(b, (h) => {
              (h["model.layers.0.input_layernorm.weight"] ?? {}).dtype = "F12";
            }),
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "model.layers.0.input_layernorm.weight": unknown dtype "F12"/,
  },
  {
    name: "overlapping offsets",
    setup: (d) =>
      quick(
        modelCopy(d, {
          shard1: (b) =>
            withHeader(b, (h) => {
              const a = h["model.layers.0.input_layernorm.weight"] as { data_offsets: number[] };
              const e = h["model.embed_tokens.weight"] as { data_offsets: number[] };
              const size = (a.data_offsets[1] as number) - (a.data_offsets[0] as number);
              a.data_offsets = [e.data_offsets[0] as number, (e.data_offsets[0] as number) + size];
            }),
        }),
        d,
      ),
    exitCode: 1,
    message: /overlaps tensor/,
  },
  {
    name: "out-of-range offsets",
    setup: (d) =>
      quick(
        modelCopy(d, {
          shard1: (b) =>
            withHeader(b, (h) => {
              const a = h["model.layers.0.input_layernorm.weight"] as { data_offsets: number[] };
              a.data_offsets = [b.length * 2, b.length * 2 + 256];
            }),
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "model.layers.0.input_layernorm.weight": data_offsets \[\d+, \d+\] outside the data section/,
  },
  {
    name: "tensor missing that the config needs",
    setup: (d) => quick(modelCopy(d, { tensors: (t) => void t.delete("model.layers.2.mlp.experts.3.up_proj.weight") }), d),
    exitCode: 1,
    message: /missing tensors: model.layers.2.mlp.experts.3.up_proj.weight/,
  },
  {
    name: "tensor with the wrong shape",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: (t) => {
            const x = t.get("model.layers.1.self_attn.q_proj.weight") as NamedRaw;
            t.set(x.name, { ...x, shape: [64, 256] });
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /wrong shapes: model.layers.1.self_attn.q_proj.weight: checkpoint \[64, 256\] vs model \[128, 128\]/,
  },
  {
    name: "index.json naming a missing shard",
    setup: (d) => {
      const m = modelCopy(d);
      fs.rmSync(path.join(m, "model-00002-of-00002.safetensors"));
      return quick(m, d);
    },
    exitCode: 1,
    message: /model.safetensors.index.json: shard "model-00002-of-00002.safetensors" \(holding "[^"]+"\) does not exist/,
  },
  {
    name: "config.json: missing field",
    setup: (d) => quick(modelCopy(d, { config: (c) => void delete c.num_experts }), d),
    exitCode: 1,
    message: /config.json: field "num_experts": missing \(required\)/,
  },
  {
    name: "config.json: negative field",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            c.hidden_size = -128;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /config.json: field "hidden_size"/,
  },
  {
    name: "config.json: top-k larger than the number of experts",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            c.num_experts_per_tok = 32;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /field "num_experts_per_tok": 32 exceeds num_experts 16/,
  },
  {
    name: "config.json: head counts that do not divide",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            c.num_key_value_heads = 3;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /field "num_key_value_heads": 3 does not divide num_attention_heads 4/,
  },
  {
    name: "config.json: layer_types of the wrong length",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            c.layer_types = ["full_attention"];
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /field "layer_types": has 1 entries but num_hidden_layers is 4/,
  },
  {
    name: "unsupported model_type",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            c.model_type = "llama";
          },
        }),
        d,
      ),
    exitCode: 1,
    message:
      /unsupported model_type "llama" \(moecal supports "afmoe", "qwen3_moe", "mixtral", "glm4_moe", "deepseek_v3", "kimi_k2", "minimax_m2", "qwen3_next", "qwen3_5_moe"; any other checkpoint is quantized data-free: --method rtn with a scheme without static activation scales\)/,
  },
  {
    name: "NaN or Inf in a weight",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: poisoned("model.layers.2.mlp.experts.9.down_proj.weight", 0.01, 77, NaN),
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "model.layers.2.mlp.experts.9.down_proj.weight": value NaN at flat index 77/,
  },
  {
    name: "empty dataset",
    setup: (d) => quick(TINY, d, ["--dataset", dataset(d, "")]),
    exitCode: 2,
    message: /data.jsonl: no usable sample \(0 records/,
  },
  {
    name: "dataset with only empty samples",
    setup: (d) => quick(TINY, d, ["--dataset", dataset(d, '{"text": ""}\n{"text": "   "}\n')]),
    exitCode: 2,
    message: /no usable sample \(2 records, all empty\)/,
  },
  {
    name: "malformed JSON line",
    setup: (d) => quick(TINY, d, ["--dataset", dataset(d, '{"text": "ok"}\n\n{"text": "broken}\n')]),
    exitCode: 2,
    message: /data.jsonl, line 3: not valid JSON/,
  },
  {
    name: "samples longer than the model's maximum positions",
    setup: (d) => [...quick(TINY, d).slice(0, -2), "--max-seq-length", "4096", "--output", path.join(d, "out")],
    exitCode: 2,
    message: /--max-seq-length 4096 exceeds the model's max_position_embeddings 2048/,
  },
  {
    name: "unknown scheme",
    setup: (d) => quick(TINY, d, ["--scheme", "W3A16"]),
    exitCode: 2,
    message: /unknown scheme "W3A16" \(known: W4A16, /,
  },
  {
    name: "a --scheme PATTERN=SCHEME entry that matches no Linear",
    setup: (d) => quick(TINY, d, ["--scheme", "re:.*expert\\.\\d+.*=NVFP4A16"]),
    exitCode: 2,
    message:
      /--scheme re:\.\*expert\\\.\\d\+\.\*=NVFP4A16 matches no Linear layer that is quantized \(names look like model\.layers\.\d+\.mlp\.experts\.0\./,
  },
  {
    name: "--max-shard-size below 1 MiB",
    setup: (d) => quick(TINY, d, ["--max-shard-size", "1000"]),
    exitCode: 2,
    message: /--max-shard-size must be at least 1M, got "1000"/,
  },
  {
    name: "unknown method",
    setup: (d) => quick(TINY, d, ["--method", "awq"]),
    exitCode: 2,
    message: /--method "awq": unknown method "awq" \(gptq or rtn\)/,
  },
  {
    name: "a --method PATTERN=METHOD whose pattern no --scheme entry has",
    setup: (d) => quick(TINY, d, ["--scheme", "re:.*experts.*=NVFP4A16", "--method", "re:.*attn.*=rtn"]),
    exitCode: 2,
    message: /--method re:\.\*attn\.\*=rtn: no --scheme entry has the pattern re:\.\*attn\.\*/,
  },
  {
    name: "a recipe file with a modifier moecal does not run",
    setup: (d) => withRecipe(d, path.join(ROOT, "test", "fixtures", "recipes", "recipe_gptq_awq.yaml")),
    exitCode: 2,
    message:
      /--recipe .*recipe_gptq_awq\.yaml: quant_stage\.quant_modifiers\.AWQModifier: moecal does not run AWQModifier \(it runs QuantizationModifier and GPTQModifier\)/,
  },
  {
    name: "a recipe file that is not YAML",
    setup: (d) => {
      fs.writeFileSync(path.join(d, "r.yaml"), "quant_stage:\n  quant_modifiers: [\n");
      return withRecipe(d, path.join(d, "r.yaml"));
    },
    exitCode: 2,
    message: /--recipe .*r\.yaml: not valid YAML/,
  },
  {
    name: "a recipe file beside --scheme",
    setup: (d) => withRecipe(d, path.join(ROOT, "test", "fixtures", "recipes", "flagship_nvfp4_fp8_block.yaml"), ["--scheme", "W8A16"]),
    exitCode: 2,
    message: /the recipe file .* gives the schemes, methods and GPTQ settings; do not pass scheme beside it/,
  },
  {
    name: "a --scheme recipe that splits q/k/v between schemes",
    setup: (d) => quick(TINY, d, ["--scheme", "W4A16", "--scheme", "re:.*q_proj=W8A16"]),
    exitCode: 2,
    message: /the ignore list or the --scheme recipe splits \d+ module\(s\) that vLLM fuses/,
  },
  {
    name: "group size that does not divide the input size",
    setup: (d) => quick(TINY, d, ["--group-size", "48"]),
    exitCode: 2,
    message: /--group-size 48 does not divide the input size 128 of model.layers.0.self_attn.q_proj/,
  },
  {
    name: "a group size for a scheme whose groups are fixed (NVFP4: 16)",
    setup: (d) => quick(TINY, d, ["--scheme", "NVFP4", "--group-size", "32"]),
    exitCode: 2,
    message: /scheme NVFP4 has groups of 16 by definition; --group-size 32 does not apply/,
  },
  {
    name: "expert statistics out of range",
    setup: (d) => quick(TINY, d, ["--expert-statistics", "unrouted:1.5"]),
    exitCode: 2,
    message: /--expert-statistics "unrouted:1.5": ALPHA out of range/,
  },
  {
    name: "resume with changed inputs (a killed run's finished layers are kept, not reused)",
    setup: (d) => {
      // a run killed after its first layer, with other options than the rerun's
      spawnSync(process.execPath, [path.join(ROOT, "dist", "test", "pipeline", "resume-child.js"), path.join(d, "out"), "0", "state"]);
      return quick(TINY, d);
    },
    exitCode: 2,
    message:
      /\.out\.moecal-work holds the finished layers of a run with other inputs \(differs: dataset contents, option method \("gptq" -> "rtn"\), .*pass --restart to discard it/,
    verify: (d) => {
      if (!fs.existsSync(path.join(d, ".out.moecal-work", "state.json"))) throw new Error("the kept work folder was harmed");
    },
  },
  {
    name: "--ignore splitting a module vLLM fuses",
    setup: (d) => quick(TINY, d, ["--ignore", "model.layers.1.self_attn.k_proj"]),
    exitCode: 2,
    message:
      /splits 1 module\(s\) that vLLM fuses.*model.layers.1.self_attn.qkv_proj: vLLM fuses q_proj, k_proj, v_proj into one module with one quantization scheme, but W4A16: q_proj, v_proj; unquantized: k_proj/,
  },
  {
    name: "output folder exists",
    keepsOutput: true,
    setup: (d) => {
      fs.mkdirSync(path.join(d, "out"));
      fs.writeFileSync(path.join(d, "out", "x"), "x");
      return quick(TINY, d);
    },
    exitCode: 2,
    message: /out exists and is not empty \(use --overwrite to replace it\)/,
  },
  {
    name: "not enough disk for the plan (256 KiB tmpfs)",
    setup: (d) => {
      const mnt = path.join(d, "small");
      fs.mkdirSync(mnt);
      const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt]);
      if (r.status !== 0) throw new Error("mount failed");
      return [...quick(TINY, d).slice(0, -2), "--output", path.join(mnt, "out")];
    },
    exitCode: 2,
    message:
      /the plan needs [\d.]+ MiB of disk \(output [\d.]+ MiB, resume state [\d.]+ MiB, shard assembly [\d.]+ MiB\), but the file system of .*small\/out has 0\.\d MiB free/,
    available: canMountTmpfs,
  },
  {
    name: "not enough memory for the plan (--max-memory 64M)",
    setup: (d) => quick(TINY, d, ["--max-memory", "64M"]),
    exitCode: 2,
    message:
      /the plan needs [\d.]+ MiB of memory at layer \d, more than --max-memory 64\.0 MiB; most of it is the process itself \(Node\.js and onnxruntime, about [\d.]+ MiB\), which no option shrinks/,
  },
  ...TRUST_CASES,
  ...ROUND2_CASES,
  ...FP8_CASES,
];

/**
 * Every bad input we try, what the user runs, and what they must get. The test runs each case;
 * `npm run doc:bad-inputs` prints the README table from real runs of the same cases.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { type NamedRaw, writeSafetensors } from "../../src/io/writer.js";
import { f32ToBf16 } from "../../src/engine/dtype.js";
import { ROOT, TINY } from "../helpers.js";

export const CLI = path.join(ROOT, "dist", "src", "cli", "main.js");

export interface BadInputCase {
  name: string;
  /** prepares the input inside `dir`; returns the moecal arguments */
  setup(dir: string): string[];
  exitCode: number;
  message: RegExp;
  /** runs only where this returns true (with the reason otherwise) */
  available?: () => string | null;
  /** the working folder of the run (default: `dir`) */
  cwd?: (dir: string) => string;
  /** the case's own `dir/out` exists before the run and must survive it */
  keepsOutput?: boolean;
  /** after the run: throws if an input was harmed */
  verify?: (dir: string) => void;
}

const SHARD1 = "model-00001-of-00002.safetensors";

/** A copy of the bundled model in `dir/model`, optionally with its config or shard 1 changed. */
function modelCopy(
  dir: string,
  opts: {
    config?: (c: Record<string, unknown>) => void;
    shard1?: (b: Buffer) => Buffer;
    tensors?: (t: Map<string, NamedRaw>) => void;
  } = {},
): string {
  const m = path.join(dir, "model");
  fs.mkdirSync(m, { recursive: true });
  for (const f of fs.readdirSync(TINY)) fs.copyFileSync(path.join(TINY, f), path.join(m, f));
  if (opts.config) {
    const c = JSON.parse(fs.readFileSync(path.join(m, "config.json"), "utf8")) as Record<string, unknown>;
    opts.config(c);
    fs.writeFileSync(path.join(m, "config.json"), JSON.stringify(c));
  }
  if (opts.shard1) fs.writeFileSync(path.join(m, SHARD1), opts.shard1(fs.readFileSync(path.join(m, SHARD1))));
  if (opts.tensors) {
    const ck = Checkpoint.open(TINY);
    const t = new Map(ck.names().map((n) => [n, { name: n, ...ck.readRaw(n) }]));
    opts.tensors(t);
    for (const f of fs.readdirSync(m)) if (f.endsWith(".safetensors") || f.endsWith(".index.json")) fs.rmSync(path.join(m, f));
    // written without the writer's finiteness check: some cases are broken on purpose
    writeSafetensors(path.join(m, "model.safetensors"), [...t.values()]);
  }
  return m;
}

/** Rewrite the JSON header of a safetensors buffer. */
function withHeader(b: Buffer, edit: (h: Record<string, Record<string, unknown>>) => void): Buffer {
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as Record<string, Record<string, unknown>>;
  edit(h);
  const json = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, b.subarray(8 + n)]);
}

function dataset(dir: string, content: string, name = "data.jsonl"): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content);
  return f;
}

const quick = (model: string, dir: string, extra: string[] = []): string[] => [
  "oneshot",
  "--model",
  model,
  "--method",
  "rtn",
  "--num-samples",
  "1",
  "--max-seq-length",
  "8",
  "--output",
  path.join(dir, "out"),
  ...extra,
];

/** Every file below `dir` with its bytes, to compare before and after a run. */
export function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const f of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, f.name);
      if (f.isDirectory()) walk(p);
      else if (f.isFile()) out.set(path.relative(dir, p), fs.readFileSync(p).toString("base64"));
    }
  };
  walk(dir);
  return out;
}

/** A case whose input folder `dir/model` (and `dir/data.jsonl`) must come out byte for byte as it went in. */
function untouched(setup: (dir: string) => string[]): Pick<BadInputCase, "setup" | "verify"> {
  const before = new Map<string, Map<string, string>>();
  return {
    setup: (d) => {
      const args = setup(d);
      before.set(d, snapshot(d));
      return args;
    },
    verify: (d) => {
      const after = snapshot(d);
      for (const [f, bytes] of before.get(d) ?? []) if (after.get(f) !== bytes) throw new Error(`input ${f} was changed or removed`);
    },
  };
}

const ALIVE_PID = (): number => process.pid;

/** A compressed-tensors copy of the bundled model in `dir/q` (W4A16_ASYM, RTN), its shard then changed by `edit`. */
function quantized(dir: string, edit?: (b: Buffer) => Buffer, config?: (c: Record<string, unknown>) => void): string {
  const q = path.join(dir, "q");
  const r = spawnSync(
    process.execPath,
    [CLI, "oneshot", "--scheme", "W4A16_ASYM", "--method", "rtn", "--num-samples", "1", "--max-seq-length", "8", "--output", q, "--quiet"],
    { encoding: "utf8", cwd: dir },
  );
  if (r.status !== 0) throw new Error(`oneshot failed: ${r.stderr}`);
  const shard = fs.readdirSync(q).find((f) => f.endsWith(".safetensors")) as string;
  if (edit) fs.writeFileSync(path.join(q, shard), edit(fs.readFileSync(path.join(q, shard))));
  if (config) {
    const c = JSON.parse(fs.readFileSync(path.join(q, "config.json"), "utf8")) as Record<string, unknown>;
    config(c);
    fs.writeFileSync(path.join(q, "config.json"), JSON.stringify(c));
  }
  return q;
}

/** A tokenizer_config.json with this chat template, and a one-sample "messages" dataset. */
function chatCase(template: string): (d: string) => string[] {
  return (d) => {
    const m = modelCopy(d);
    const tc = JSON.parse(fs.readFileSync(path.join(m, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    tc.chat_template = template;
    fs.writeFileSync(path.join(m, "tokenizer_config.json"), JSON.stringify(tc));
    return quick(m, d, ["--dataset", dataset(d, '{"messages": [{"role": "user", "content": "hello"}]}\n')]);
  };
}

const EXPERT = "model.layers.1.mlp.experts.3.gate_proj";

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
            c.model_type = "mixtral";
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /unsupported model_type "mixtral"/,
  },
  {
    name: "NaN or Inf in a weight",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: (t) => {
            const x = t.get("model.layers.2.mlp.experts.9.down_proj.weight") as NamedRaw;
            const v = new Float32Array(x.bytes.byteLength / 2).fill(0.01);
            v[77] = NaN;
            t.set(x.name, { ...x, bytes: new Uint8Array(f32ToBf16(v).buffer) });
          },
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
    message: /option '--scheme <name>' argument 'W3A16' is invalid/,
  },
  {
    name: "group size that does not divide the input size",
    setup: (d) => quick(TINY, d, ["--group-size", "48"]),
    exitCode: 2,
    message: /--group-size 48 does not divide the input size 128 of model.layers.0.self_attn.q_proj/,
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
    name: "output disk full (256 KiB tmpfs)",
    setup: (d) => {
      const mnt = path.join(d, "small");
      fs.mkdirSync(mnt);
      const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt]);
      if (r.status !== 0) throw new Error("mount failed");
      return [...quick(TINY, d).slice(0, -2), "--output", path.join(mnt, "out")];
    },
    exitCode: 1,
    message: /write failed \(ENOSPC/,
    available: canMountTmpfs,
  },
  // inputs are sacred
  {
    name: "--output is the model folder, with --overwrite",
    ...untouched((d) => {
      const m = modelCopy(d);
      return [...quick(m, d).slice(0, -2), "--output", m, "--overwrite"];
    }),
    exitCode: 2,
    message: /output ".*model" is the model .*; inputs are never overwritten/,
  },
  {
    name: "--output contains the model folder, with --overwrite",
    ...untouched((d) => {
      const m = modelCopy(d);
      fs.mkdirSync(path.join(d, "work"));
      return [...quick(m, d).slice(0, -2), "--output", d, "--overwrite"];
    }),
    cwd: () => os.tmpdir(),
    exitCode: 2,
    message: /contains the model/,
  },
  {
    name: '--output is the current folder ("")',
    ...untouched((d) => {
      modelCopy(d);
      return [...quick("model", d).slice(0, -2), "--output", "", "--overwrite"];
    }),
    exitCode: 2,
    message: /output "" is the current folder or contains it/,
  },
  {
    name: "--output is the current folder (.)",
    ...untouched((d) => {
      modelCopy(d);
      return [...quick("model", d).slice(0, -2), "--output", ".", "--overwrite"];
    }),
    exitCode: 2,
    message: /output "\." is the current folder or contains it/,
  },
  {
    name: "--output is the root folder",
    setup: (d) => [...quick(TINY, d).slice(0, -2), "--output", "/", "--overwrite"],
    exitCode: 2,
    message: /output "\/" is the root folder/,
  },
  {
    name: "--output is the dataset file, with --overwrite",
    ...untouched((d) => {
      const f = dataset(d, '{"text": "hello world"}\n');
      return [...quick(TINY, d).slice(0, -2), "--dataset", f, "--output", f, "--overwrite"];
    }),
    exitCode: 2,
    message: /is the dataset .*data.jsonl; inputs are never overwritten/,
  },
  {
    name: "--output inside the model folder",
    ...untouched((d) => {
      const m = modelCopy(d);
      return [...quick(m, d).slice(0, -2), "--output", path.join(m, "q")];
    }),
    exitCode: 2,
    message: /lies inside the model/,
  },
  {
    name: "--overwrite on a folder that is not a moecal output",
    ...untouched((d) => {
      fs.mkdirSync(path.join(d, "out"));
      fs.writeFileSync(path.join(d, "out", "thesis.tex"), "x");
      return quick(TINY, d, ["--overwrite"]);
    }),
    keepsOutput: true,
    exitCode: 2,
    message: /out exists and is not a moecal output \(it has no moecal.json\); --overwrite replaces only moecal's own outputs/,
  },
  {
    name: "--output is a symlink, with --overwrite",
    ...untouched((d) => {
      const real = path.join(d, "elsewhere");
      fs.mkdirSync(real);
      fs.writeFileSync(path.join(real, "moecal.json"), '{"moecal_version": "0.1.0"}');
      fs.symlinkSync(real, path.join(d, "out"));
      return quick(TINY, d, ["--overwrite"]);
    }),
    keepsOutput: true,
    exitCode: 2,
    message: /out is a symlink; moecal neither writes through nor replaces symlinks/,
  },
  // nothing outside the model folder is read or exposed
  {
    name: "tokenizer.json is a symlink leading outside the model folder",
    ...untouched((d) => {
      const m = modelCopy(d);
      fs.copyFileSync(path.join(m, "tokenizer.json"), path.join(d, "private.json"));
      fs.rmSync(path.join(m, "tokenizer.json"));
      fs.symlinkSync(path.join(d, "private.json"), path.join(m, "tokenizer.json"));
      return quick(m, d);
    }),
    exitCode: 1,
    message: /tokenizer.json: is a symlink leading outside the model folder \(to .*private.json\); refused/,
  },
  // only regular files, size-checked before reading
  {
    name: "dataset is a FIFO",
    setup: (d) => {
      const f = path.join(d, "fifo.jsonl");
      spawnSync("mkfifo", [f]);
      return quick(TINY, d, ["--dataset", f]);
    },
    exitCode: 2,
    message: /dataset .*fifo.jsonl: is a FIFO \(named pipe\), expected a regular file/,
  },
  {
    name: "dataset is a folder",
    setup: (d) => {
      fs.mkdirSync(path.join(d, "data"));
      return quick(TINY, d, ["--dataset", path.join(d, "data")]);
    },
    exitCode: 2,
    message: /dataset .*data: is a folder, expected a regular file/,
  },
  {
    name: "dataset is a device",
    setup: (d) => quick(TINY, d, ["--dataset", "/dev/zero"]),
    exitCode: 2,
    message: /dataset \/dev\/zero: is a device, expected a regular file/,
  },
  {
    name: "config.json is a FIFO",
    setup: (d) => {
      const m = modelCopy(d);
      fs.rmSync(path.join(m, "config.json"));
      spawnSync("mkfifo", [path.join(m, "config.json")]);
      return quick(m, d);
    },
    exitCode: 1,
    message: /config.json: is a FIFO \(named pipe\), expected a regular file/,
  },
  {
    name: "config.json is a folder",
    setup: (d) => {
      const m = modelCopy(d);
      fs.rmSync(path.join(m, "config.json"));
      fs.mkdirSync(path.join(m, "config.json"));
      return quick(m, d);
    },
    exitCode: 1,
    message: /config.json: is a folder, expected a regular file/,
  },
  {
    name: "a shard is a dangling symlink",
    setup: (d) => {
      const m = modelCopy(d);
      fs.rmSync(path.join(m, SHARD1));
      fs.symlinkSync(path.join(d, "gone.safetensors"), path.join(m, SHARD1));
      return quick(m, d);
    },
    exitCode: 1,
    message: /model-00001-of-00002.safetensors: a dangling symlink/,
  },
  // every tensor written is finite
  {
    name: "NaN in lm_head (written unquantized)",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: (t) => {
            const x = t.get("lm_head.weight") as NamedRaw;
            const v = new Float32Array(x.bytes.byteLength / 2).fill(0.01);
            v[5] = NaN;
            t.set(x.name, { ...x, bytes: new Uint8Array(f32ToBf16(v).buffer) });
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "lm_head.weight" \(written unquantized\) holds a non-finite value at flat index 5; nothing was written/,
  },
  {
    name: "Inf in the final norm (written unquantized)",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: (t) => {
            const x = t.get("model.norm.weight") as NamedRaw;
            const v = new Float32Array(x.bytes.byteLength / 2).fill(1);
            v[0] = Infinity;
            t.set(x.name, { ...x, bytes: new Uint8Array(f32ToBf16(v).buffer) });
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "model.norm.weight" \(written unquantized\) holds a non-finite value at flat index 0/,
  },
  // one run per output
  {
    name: "another run is writing the output",
    setup: (d) => {
      fs.writeFileSync(path.join(d, ".out.moecal-lock"), String(ALIVE_PID()));
      return quick(TINY, d);
    },
    exitCode: 2,
    message: /out is being written by another moecal run \(pid \d+/,
  },
  // inspect and the loader check every tensor against quantization_config
  {
    name: "inspect: a zero point of the wrong shape",
    setup: (d) => [
      "inspect",
      quantized(d, (b) =>
        withHeader(b, (h) => {
          const z = h[`${EXPERT}.weight_zero_point`] as { shape: number[] };
          z.shape = [z.shape[1] as number, z.shape[0] as number];
        }),
      ),
    ],
    exitCode: 1,
    message: /weight_zero_point: I32 \[2, 8\], expected I32 \[8, 2\]/,
  },
  {
    name: "inspect: a tensor named twice in one header",
    setup: (d) => [
      "inspect",
      quantized(d, (b) => {
        const n = Number(b.readBigUInt64LE(0));
        const text = b
          .subarray(8, 8 + n)
          .toString("utf8")
          .replace(/^\{/, `{"${EXPERT}.weight_scale":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},`);
        const json = Buffer.from(text);
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(json.length));
        return Buffer.concat([len, json, b.subarray(8 + n)]);
      }),
    ],
    exitCode: 1,
    message: /header names tensor "model.layers.1.mlp.experts.3.gate_proj.weight_scale" twice/,
  },
  {
    name: "inspect: bytes not covered by any header entry",
    setup: (d) => ["inspect", quantized(d, (b) => Buffer.concat([b, Buffer.alloc(64, 7)]))],
    exitCode: 1,
    message: /data bytes \[\d+, \d+\) are not covered by any tensor in the header/,
  },
  {
    name: "inspect: a tensor named __proto__",
    setup: (d) => [
      "inspect",
      quantized(d, (b) =>
        withHeader(b, (h) => {
          Object.defineProperty(h, "__proto__", { value: h["model.norm.weight"], enumerable: true });
          delete h["model.norm.weight"];
        }),
      ),
    ],
    exitCode: 1,
    message: /"__proto__" is not a plain tensor name/,
  },
  {
    name: "eval: a checkpoint with an unexpected tensor",
    setup: (d) => {
      const extra = "model.layers.1.mlp.experts.3.extra";
      const q = quantized(d, (b) =>
        withHeader(b, (h) => {
          const end = Math.max(...Object.values(h).map((e) => (e as { data_offsets?: number[] }).data_offsets?.[1] ?? 0));
          h[extra] = { dtype: "U8", shape: [0], data_offsets: [end, end] };
        }),
      );
      const index = path.join(q, "model.safetensors.index.json");
      const j = JSON.parse(fs.readFileSync(index, "utf8")) as { weight_map: Record<string, string> };
      j.weight_map[extra] = Object.values(j.weight_map)[0] as string;
      fs.writeFileSync(index, JSON.stringify(j));
      return ["eval", "--model", q, "--dataset", dataset(d, '{"text": "hi"}\n')];
    },
    exitCode: 1,
    message: /do not match config.json's quantization_config .*model.layers.1.mlp.experts.3.extra: unexpected tensor/,
  },
  // a user-caused condition is never an internal error
  {
    name: "quantization_config with a malformed field",
    setup: (d) => [
      "eval",
      "--model",
      quantized(d, undefined, (c) => {
        (
          (c.quantization_config as { config_groups: Record<string, { weights: Record<string, unknown> }> }).config_groups.group_0 as {
            weights: Record<string, unknown>;
          }
        ).weights.group_size = "big";
      }),
      "--dataset",
      dataset(d, '{"text": "hi"}\n'),
    ],
    exitCode: 1,
    message: /quantization_config field "config_groups.group_0.weights.group_size"/,
  },
  {
    name: "chat template that raises",
    setup: chatCase("{{ raise_exception('no system role') }}"),
    exitCode: 2,
    message: /sample 1 \(after shuffling\): the tokenizer's chat template fails \(.*no system role/,
  },
  {
    name: "chat template with an unknown filter",
    setup: chatCase("{{ messages[0].content | frobnicate }}"),
    exitCode: 2,
    message: /the tokenizer's chat template fails \(.*frobnicate/,
  },
  {
    name: "chat template that does not parse",
    setup: chatCase("{% for m in messages %}{{ m.content }"),
    exitCode: 2,
    message: /the tokenizer's chat template does not parse/,
  },
  {
    name: "chat template that runs away",
    setup: chatCase("{% for a in range(1000000) %}{% for b in range(1000000) %}{% endfor %}{% endfor %}"),
    exitCode: 2,
    message: /the tokenizer's chat template did not finish within 5 s \(a runaway template\); stopped/,
  },
  {
    name: "chat message with content null",
    setup: (d) => quick(TINY, d, ["--dataset", dataset(d, '{"messages": [{"role": "user", "content": null}]}\n')]),
    exitCode: 2,
    message: /line 1: message 1 has "content": null; every message needs its text as a "content" string/,
  },
  // bounded work before the work
  {
    name: "config.json: more experts than moecal's limit",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            c.num_experts = 1_000_000;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /field "num_experts": 1000000 exceeds moecal's limit of 4096/,
  },
  {
    name: "config.json nested too deep",
    setup: (d) =>
      quick(
        modelCopy(d, {
          config: (c) => {
            let v: unknown = 1;
            for (let i = 0; i < 100; i++) v = [v];
            c.deep = v;
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /config.json: nested deeper than the limit of 64 levels/,
  },
  {
    name: "input tensor for an expert beyond num_experts",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: (t) => {
            const x = t.get(`${EXPERT}.weight`) as NamedRaw;
            t.set("model.layers.1.mlp.experts.16.gate_proj.weight", { ...x, name: "model.layers.1.mlp.experts.16.gate_proj.weight" });
          },
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "model.layers.1.mlp.experts.16.gate_proj.weight" belongs to expert 16, but the config has 16 experts/,
  },
  {
    name: "input tensor with a name moecal writes",
    setup: (d) =>
      quick(
        modelCopy(d, {
          tensors: (t) =>
            t.set(`${EXPERT}.weight_scale`, { name: `${EXPERT}.weight_scale`, dtype: "F32", shape: [1], bytes: new Uint8Array(4) }),
        }),
        d,
      ),
    exitCode: 1,
    message: /tensor "model.layers.1.mlp.experts.3.gate_proj.weight_scale" has the name moecal writes for the quantized/,
  },
  {
    name: "safetensors __metadata__ over its limit",
    setup: (d) =>
      quick(
        modelCopy(d, {
          shard1: (b) =>
            withHeader(b, (h) => {
              h.__metadata__ = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, "v"]));
            }),
        }),
        d,
      ),
    exitCode: 1,
    message: /__metadata__ has 2000 entries .* over the limit of 1024 entries/,
  },
  // exact inputs or a clear refusal
  {
    name: "forward: a token id outside the vocabulary",
    setup: (d) => {
      const f = path.join(d, "ids.safetensors");
      writeSafetensors(f, [
        { name: "input_ids", dtype: "I64", shape: [1, 3], bytes: new Uint8Array(new BigInt64Array([1n, 2n ** 31n, 3n]).buffer) },
      ]);
      return ["forward", "--input-ids", f, "--output", path.join(d, "logits.safetensors")];
    },
    exitCode: 2,
    message: /"input_ids" holds 2147483648 at flat index 1, outside the model's vocabulary \[0, \d+\)/,
  },
  {
    name: "--seed negative",
    setup: (d) => quick(TINY, d, ["--seed", "-1"]),
    exitCode: 2,
    message: /NumPy's default_rng refuses negative seeds/,
  },
  {
    name: "--seed not an integer",
    setup: (d) => quick(TINY, d, ["--seed", "1.5"]),
    exitCode: 2,
    message: /seed "1.5": must be a non-negative integer written in decimal digits/,
  },
];

/** Whether this machine lets us mount a small tmpfs (root, and a sandbox that allows it). */
function canMountTmpfs(): string | null {
  if (process.getuid?.() !== 0) return "needs root to mount a small tmpfs";
  const probe = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-mount-"));
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", probe]);
  if (r.status === 0) spawnSync("umount", [probe]);
  fs.rmSync(probe, { recursive: true, force: true });
  return r.status === 0 ? null : "mounting a tmpfs is not allowed here";
}

/** Unmount anything a case mounted under `dir`. */
export function cleanupCase(dir: string): void {
  const mnt = path.join(dir, "small");
  if (fs.existsSync(mnt)) spawnSync("umount", [mnt]);
}

export function runCase(c: BadInputCase, dir: string): { status: number | null; stderr: string; stdout: string } {
  const args = c.setup(dir);
  // a bound on every run: a read that blocked (a FIFO) fails the case instead of hanging the suite
  return spawnSync(process.execPath, [CLI, ...args], {
    encoding: "utf8",
    cwd: c.cwd?.(dir) ?? dir,
    timeout: 60_000,
    killSignal: "SIGKILL",
  });
}

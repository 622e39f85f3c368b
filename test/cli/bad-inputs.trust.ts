/**
 * The bad inputs of the trust promises (docs/robustness.md): inputs as outputs, symlinks, special
 * files, non-finite tensors, locks, checkpoint layouts, templates, limits, exact inputs, what the user runs, and what they must get. The test runs each case;
 * `npm run doc:bad-inputs` prints the README table from real runs of the same cases.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import type { NamedRaw } from "../../src/io/writer.js";
import { writeSafetensors } from "../../src/io/writer.js";
import { TINY } from "../helpers.js";
import {
  type BadInputCase,
  ALIVE_PID,
  EXPERT,
  SHARD1,
  chatCase,
  dataset,
  modelCopy,
  quantized,
  quick,
  untouched,
  withHeader,
  poisoned,
} from "./bad-inputs.fixtures.js";

export const TRUST_CASES: BadInputCase[] = [
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
          tensors: poisoned("lm_head.weight", 0.01, 5, NaN),
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
          tensors: poisoned("model.norm.weight", 1, 0, Infinity),
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

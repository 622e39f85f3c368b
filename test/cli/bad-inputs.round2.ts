/**
 * The bad inputs of the second trust round (issue 29): the work folder, resume identity, fixed
 * group sizes, sample lengths and config values, what the user runs, and what they must get.
 */
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { type BadInputCase, CLI, SHARD1, canMountTmpfs, dataset, modelCopy, poisoned, quick } from "./bad-inputs.fixtures.js";
import { ROOT, TINY } from "../helpers.js";

/** A random AFMoE-shaped model in `dir/model` with these config.json overrides. */
export function randomCopy(dir: string, set: string[], layers = 2): string {
  const m = path.join(dir, "model");
  const r = spawnSync(
    process.execPath,
    [CLI, "random-model", "--output", m, "--layers", String(layers), ...set.flatMap((s) => ["--set", s])],
    {
      encoding: "utf8",
    },
  );
  if (r.status !== 0) throw new Error(`random-model failed: ${r.stderr}`);
  return m;
}

export const ROUND2_CASES: BadInputCase[] = [
  {
    name: "MXFP4A16 on a Linear whose input its fixed group of 32 does not divide",
    setup: (d) => quick(randomCopy(d, ["moe_intermediate_size=48"]), d, ["--scheme", "MXFP4A16"]),
    exitCode: 2,
    message:
      /scheme MXFP4A16 has groups of 32 by definition, which do not divide the input size 48 of model\.layers\.\d+\.mlp\.experts\.0\.down_proj; choose another scheme/,
  },
  {
    name: "eval: samples longer than the model's maximum positions",
    setup: (d) => ["eval", "--model", TINY, "--dataset", dataset(d, '{"text": "hello"}\n'), "--max-seq-length", "4096"],
    exitCode: 2,
    message: /--max-seq-length 4096 exceeds the model's max_position_embeddings 2048/,
  },
  {
    name: "coverage: samples longer than the model's maximum positions",
    setup: (d) => ["coverage", "--model", TINY, "--dataset", dataset(d, '{"text": "hello"}\n'), "--max-seq-length", "4096"],
    exitCode: 2,
    message: /--max-seq-length 4096 exceeds the model's max_position_embeddings 2048/,
  },
  {
    name: "remote code over its size limit (refused before any work)",
    setup: (d) => {
      const m = modelCopy(d, { config: (c) => Object.assign(c, { auto_map: { AutoConfig: "big_code.Config" } }) });
      fs.writeFileSync(path.join(m, "big_code.py"), Buffer.alloc(16 * 1024 * 1024 + 1, 0x20));
      return quick(m, d);
    },
    exitCode: 1,
    message: /remote code module .*big_code\.py: 16777217 bytes exceeds the limit of 16777216 bytes/,
    verify: (d) => {
      if (fs.existsSync(path.join(d, ".out.moecal-work"))) throw new Error("work started before the refusal");
    },
  },
  {
    name: "config.json: route_scale too large for float32 (1e308)",
    setup: (d) => quick(modelCopy(d, { config: (c) => Object.assign(c, { route_scale: 1e308 }) }), d),
    exitCode: 1,
    message: /config\.json: field "route_scale": too large for float32 arithmetic/,
  },
  {
    name: "inspect: an FP8_BLOCK checkpoint vLLM would not load (blocks of 128 do not divide the experts' 64) is reported, as oneshot warned",
    setup: (d) => {
      const q = path.join(d, "q");
      const r = spawnSync(process.execPath, [CLI, ...quick(TINY, d).slice(0, -2), "--output", q, "--scheme", "FP8_BLOCK", "--quiet"], {
        encoding: "utf8",
      });
      if (!/vLLM's FP8 block MoE needs .*vLLM would not load it/.test(r.stderr)) throw new Error(`oneshot did not warn: ${r.stderr}`);
      return ["inspect", q];
    },
    exitCode: 0,
    message: /- model\.layers\.1\.mlp\.experts: vLLM's FP8 block MoE needs the expert intermediate size \(64\) .* vLLM would not load it/,
  },
  {
    name: "NaN in a weight, data-free (--method rtn without --calibrate)",
    setup: (d) => {
      const m = modelCopy(d, { tensors: poisoned("model.layers.2.mlp.experts.9.down_proj.weight", 0.01, 77, Number.NaN) });
      return ["oneshot", "--model", m, "--method", "rtn", "--output", path.join(d, "out")];
    },
    exitCode: 1,
    message:
      /tensor "model\.layers\.2\.mlp\.experts\.9\.down_proj\.weight": value NaN at flat index 77 .*the checkpoint holds non-finite weights/,
    verify: (d) => {
      if (fs.readdirSync(d).some((f) => f.startsWith(".out"))) throw new Error("a temporary output, lock or work folder was left");
    },
  },
  {
    name: "not enough memory for a data-free run (--max-memory 64M)",
    setup: (d) => ["oneshot", "--method", "rtn", "--output", path.join(d, "out"), "--max-memory", "64M"],
    exitCode: 2,
    message:
      /the data-free run needs [\d.]+ MiB of memory \(the largest weights held at once [\d.]+ MiB, \d+ worker thread\(s\) [\d.]+ MiB, copy buffers [\d.]+ MiB, beside the process itself: .*\), more than --max-memory 64\.0 MiB/,
  },
  {
    name: "not enough disk for a data-free run (256 KiB tmpfs)",
    setup: (d) => {
      const mnt = path.join(d, "small");
      fs.mkdirSync(mnt);
      if (spawnSync("mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt]).status !== 0) throw new Error("mount failed");
      return ["oneshot", "--method", "rtn", "--output", path.join(mnt, "out")];
    },
    exitCode: 2,
    message:
      /the data-free run needs [\d.]+ MiB of disk \(output [\d.]+ MiB, shard assembly [\d.]+ MiB\), but the file system of .*small\/out has 0\.\d MiB free/,
    available: canMountTmpfs,
  },
  {
    name: "a negative number of worker threads",
    setup: (d) => ["oneshot", "--method", "rtn", "--workers", "-1", "--output", path.join(d, "out")],
    exitCode: 2,
    message: /--workers must be an integer >= 0, got "-1"/,
  },
  {
    name: "resume of a data-free run whose shards.json was damaged",
    setup: (d) => {
      const child = path.join(ROOT, "dist", "test", "pipeline", "data-free-child.js");
      const r = spawnSync(process.execPath, [child, path.join(d, "out"), "shard", "0"]);
      if (r.signal !== "SIGKILL") throw new Error(`the run to kill ended otherwise: ${r.stderr}`);
      fs.writeFileSync(path.join(d, ".out.moecal-work", "shards.json"), '{"shards": [');
      return ["oneshot", "--method", "rtn", "--scheme", "W8A16", "--max-shard-size", "1M", "--output", path.join(d, "out")];
    },
    exitCode: 1,
    message: /\.out\.moecal-work\/shards\.json: not valid JSON \(.*\); rerun with --restart to discard the work folder and start over/,
  },
  {
    name: "the work folder is a symlink (planted beside the output, leading to another folder)",
    setup: (d) => {
      fs.mkdirSync(path.join(d, "elsewhere"));
      fs.symlinkSync(path.join(d, "elsewhere"), path.join(d, ".out.moecal-work"));
      return quick(TINY, d);
    },
    exitCode: 2,
    message:
      /the work folder .*\.out\.moecal-work is a symlink \(moecal never writes through links\); moecal trusts only the private folder it made itself/,
    verify: (d) => {
      if (fs.readdirSync(path.join(d, "elsewhere")).length) throw new Error("written through the link");
    },
  },
  {
    name: "a work folder open to other users (not one moecal made)",
    setup: (d) => {
      fs.mkdirSync(path.join(d, ".out.moecal-work"), { mode: 0o777 });
      fs.chmodSync(path.join(d, ".out.moecal-work"), 0o777);
      return quick(TINY, d);
    },
    exitCode: 2,
    message: /the work folder .*\.out\.moecal-work is open to other users \(mode 777\).*pass --restart to discard it/,
  },
  {
    name: "resume after the weights changed (same names and shapes)",
    setup: (d) => {
      const m = modelCopy(d);
      killedQuick(d, m);
      const shard = path.join(m, SHARD1);
      const b = fs.readFileSync(shard);
      b[b.length - 1] = (b[b.length - 1] as number) ^ 1; // one bit of the last tensor's data
      fs.writeFileSync(shard, b);
      return quick(m, d);
    },
    exitCode: 2,
    message: /holds the finished layers of a run with other inputs \(differs: model weights or config \(content hash\)\)/,
  },
  {
    name: "resume after the tokenizer changed",
    setup: (d) => {
      const m = modelCopy(d);
      killedQuick(d, m);
      const tc = path.join(m, "tokenizer_config.json");
      fs.writeFileSync(tc, fs.readFileSync(tc, "utf8").replace("{", '{"model_max_length": 7,'));
      return quick(m, d);
    },
    exitCode: 2,
    message: /differs: tokenizer file tokenizer_config\.json\)/,
  },
  {
    name: "a damaged work state (state.json of the wrong shape)",
    setup: (d) => {
      fs.writeFileSync(path.join(killedQuick(d), "state.json"), JSON.stringify({ layer: "0" }));
      return quick(TINY, d);
    },
    exitCode: 1,
    message:
      /state\.json: not a work state moecal wrote \(field "layer": .*\); rerun with --restart to discard the work folder and start over/,
  },
  {
    name: "a work state ahead of its layer files",
    setup: (d) => {
      fs.rmSync(path.join(killedQuick(d), "layer-0.safetensors"));
      return quick(TINY, d);
    },
    exitCode: 1,
    message: /the work folder .* is damaged: state\.json says layer 0 finished, but layer-0\.safetensors is missing; rerun with --restart/,
  },
];

/** The work folder a `quick` run to `dir/out` leaves when killed after layer 0 (of the model in `dir/model`, else the bundled one). */
export function killedQuick(dir: string, model?: string): string {
  const child = path.join(ROOT, "dist", "test", "pipeline", "resume-child.js");
  const r = spawnSync(process.execPath, [child, path.join(dir, "out"), "0", "state", "--quick", ...(model ? ["--model", model] : [])]);
  if (r.signal !== "SIGKILL") throw new Error(`the run to kill ended otherwise: ${r.stderr}`);
  return path.join(dir, ".out.moecal-work");
}

/**
 * Bad FP8 block-scaled source checkpoints (issue 23): each refused before any work with the
 * tensor or field named, exit 1, nothing written.
 */
import fs from "node:fs";
import path from "node:path";
import { SafetensorsFile } from "../../src/io/safetensors.js";
import { type NamedRaw, writeSafetensors } from "../../src/io/writer.js";
import { ROOT, fixtureCopy } from "../helpers.js";
import { type BadInputCase, quick } from "./bad-inputs.fixtures.js";

const FP8 = path.join(ROOT, "test", "fixtures", "tiny-deepseek_v3-fp8");
const SCALE = "model.layers.1.self_attn.q_b_proj.weight_scale_inv";

/** A copy of tiny-deepseek_v3-fp8 in `dir/model`, its config or tensors changed. */
export function fp8Copy(
  dir: string,
  opts: { config?: (c: Record<string, unknown>) => void; tensors?: (t: Map<string, NamedRaw>) => void } = {},
): string {
  const m = fixtureCopy(FP8, path.join(dir, "model"));
  if (opts.config) {
    const c = JSON.parse(fs.readFileSync(path.join(m, "config.json"), "utf8")) as Record<string, unknown>;
    opts.config(c);
    fs.writeFileSync(path.join(m, "config.json"), JSON.stringify(c));
  }
  if (opts.tensors) {
    const f = SafetensorsFile.open(path.join(FP8, "model.safetensors"));
    const t = new Map([...f.tensors.keys()].map((n) => [n, { name: n, ...f.readRaw(n) }]));
    opts.tensors(t);
    writeSafetensors(path.join(m, "model.safetensors"), [...t.values()]);
  }
  return m;
}

/** A `tensors` edit: the float32 scale tensor `name` with `value` at flat index `at`. */
const scaleValue =
  (name: string, at: number, value: number) =>
  (t: Map<string, NamedRaw>): void => {
    const x = t.get(name) as NamedRaw;
    const v = new Float32Array(x.bytes.slice().buffer);
    v[at] = value;
    t.set(name, { ...x, bytes: new Uint8Array(v.buffer) });
  };

const fp8Quick = (d: string, m: string): string[] => quick(m, d, ["--scheme", "W4A16", "--group-size", "16"]);

export const FP8_CASES: BadInputCase[] = [
  {
    name: "FP8 source: a weight_scale_inv of the wrong shape",
    setup: (d) =>
      fp8Quick(
        d,
        fp8Copy(d, {
          tensors: (t) => {
            const x = t.get(SCALE) as NamedRaw;
            t.set(SCALE, { ...x, shape: [1, 2] });
          },
        }),
      ),
    exitCode: 1,
    message:
      /tensor "model\.layers\.1\.self_attn\.q_b_proj\.weight_scale_inv": F32 \[1, 2\], expected F32 \[2, 1\] \(weight \[64, 32\] in blocks of 32 x 32/,
  },
  {
    name: "FP8 source: an F8_E4M3 weight without its weight_scale_inv",
    setup: (d) => fp8Quick(d, fp8Copy(d, { tensors: (t) => t.delete(SCALE) })),
    exitCode: 1,
    message:
      /tensor "model\.layers\.1\.self_attn\.q_b_proj\.weight": F8_E4M3 without block scales \(no "model\.layers\.1\.self_attn\.q_b_proj\.weight_scale_inv"\)/,
  },
  {
    name: "FP8 source: a weight_scale_inv whose weight is missing",
    setup: (d) =>
      fp8Quick(
        d,
        fp8Copy(d, {
          tensors: (t) => {
            const x = t.get(SCALE) as NamedRaw;
            t.set("model.layers.1.self_attn.q_c_proj.weight_scale_inv", {
              ...x,
              name: "model.layers.1.self_attn.q_c_proj.weight_scale_inv",
            });
          },
        }),
      ),
    exitCode: 1,
    message:
      /tensor "model\.layers\.1\.self_attn\.q_c_proj\.weight_scale_inv": block scales without their weight "model\.layers\.1\.self_attn\.q_c_proj\.weight"/,
  },
  {
    name: "FP8 source: a NaN block scale",
    setup: (d) => fp8Quick(d, fp8Copy(d, { tensors: scaleValue(SCALE, 1, Number.NaN) })),
    exitCode: 1,
    message: /tensor "model\.layers\.1\.self_attn\.q_b_proj\.weight_scale_inv": scale NaN at block \[1, 0\] is not finite and positive/,
  },
  {
    name: "FP8 source: a zero block scale",
    setup: (d) => fp8Quick(d, fp8Copy(d, { tensors: scaleValue(SCALE, 0, 0) })),
    exitCode: 1,
    message: /tensor "model\.layers\.1\.self_attn\.q_b_proj\.weight_scale_inv": scale 0 at block \[0, 0\] is not finite and positive/,
  },
  {
    name: "FP8 source: a negative block scale",
    setup: (d) => fp8Quick(d, fp8Copy(d, { tensors: scaleValue(SCALE, 0, -0.01) })),
    exitCode: 1,
    message: /scale -0\.0099999\d* at block \[0, 0\] is not finite and positive/,
  },
  {
    name: "FP8 source: F8_E4M3 weights in a folder whose config.json has no quantization_config",
    setup: (d) => fp8Quick(d, fp8Copy(d, { config: (c) => delete c.quantization_config })),
    exitCode: 1,
    message: /tensor "[^"]+" is FP8 block-scaled data, but config\.json has no quantization_config saying so/,
  },
  {
    name: "FP8 source: an unknown quant_method",
    setup: (d) => fp8Quick(d, fp8Copy(d, { config: (c) => Object.assign(c, { quantization_config: { quant_method: "awq", bits: 4 } }) })),
    exitCode: 1,
    message: /quantization_config field "quant_method": "awq" is not a format moecal reads \("compressed-tensors", "fp8"\)/,
  },
  {
    name: "FP8 source: an unknown fmt",
    setup: (d) =>
      fp8Quick(
        d,
        fp8Copy(d, {
          config: (c) => Object.assign(c.quantization_config as object, { fmt: "e5m2" }),
        }),
      ),
    exitCode: 1,
    message: /quantization_config field "fmt": must be "e4m3" \(or "float8_e4m3fn"\)/,
  },
  {
    name: "FP8 source: no weight_block_size (per-tensor FP8)",
    setup: (d) =>
      fp8Quick(
        d,
        fp8Copy(d, {
          config: (c) => delete (c.quantization_config as Record<string, unknown>).weight_block_size,
        }),
      ),
    exitCode: 1,
    message: /quantization_config field "weight_block_size": missing \(required\)/,
  },
];

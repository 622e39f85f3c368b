/**
 * The bad inputs of the second trust round (issue 29): the work folder, resume identity, fixed
 * group sizes, sample lengths and config values, what the user runs, and what they must get.
 */
import path from "node:path";
import { spawnSync } from "node:child_process";
import { type BadInputCase, CLI, quick } from "./bad-inputs.fixtures.js";

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
];

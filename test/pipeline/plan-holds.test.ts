/**
 * The plan holds: every scheme (on the bundled AFMoE) and every family (two schemes each), the
 * shapes that broke it before (a 150k-token vocabulary; NVFP4 with GPTQ on experts large enough for
 * worker threads), and MoE layers in expert groups, run within the plan's peak memory + 10% (under
 * a cgroup limit of that size where the machine allows, and by the run's own measured peak in any case).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { ROOT, TINY, tempDir } from "../helpers.js";
import { SCHEME_NAMES } from "../../src/quantization/scheme.js";

const child = path.join(ROOT, "dist", "test", "pipeline", "plan-holds-child.js");
const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = tempDir("moecal-plan-holds-");

function randomModel(name: string, set: string[]): string {
  const out = path.join(tmp, name);
  const args = [cli, "random-model", "--output", out, "--layers", "2", ...set.flatMap((s) => ["--set", s])];
  const r = spawnSync(process.execPath, args, { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return out;
}

function holds(model: string, scheme: string, group?: number): void {
  const out = path.join(tmp, `out-${path.basename(model)}-${scheme}`);
  const r = spawnSync(process.execPath, [child, model, scheme, out, ...(group ? [String(group)] : [])], { encoding: "utf8" });
  assert.equal(r.signal, null, `killed by ${r.signal}: over the cgroup limit of the plan + 10%? ${r.stderr.slice(-400)}`);
  assert.equal(r.status, 0, r.stderr.slice(-800));
  const { plan, peak } = JSON.parse(r.stdout) as { plan: number; peak: number; limited: boolean };
  const mb = (b: number): string => (b / 1024 ** 2).toFixed(0);
  assert.ok(peak <= 1.1 * plan, `${scheme} on ${path.basename(model)}: peak ${mb(peak)} MB, plan ${mb(plan)} MB`);
  fs.rmSync(out, { recursive: true, force: true });
}

for (const scheme of SCHEME_NAMES) test(`the plan holds: ${scheme} with GPTQ on the bundled AFMoE`, () => holds(TINY, scheme));

for (const family of ["qwen3_moe", "mixtral", "glm4_moe"])
  for (const scheme of ["W4A16", "NVFP4"])
    test(`the plan holds: ${scheme} with GPTQ on ${family}`, () => holds(path.join(ROOT, "test", "fixtures", `tiny-${family}`), scheme));

test("the plan holds: a 150k-token vocabulary (the embedding step was left out of the plan)", () =>
  holds(randomModel("vocab150k", ["vocab_size=151936", "hidden_size=512"]), "W4A16"));

const experts512 = (): string =>
  fs.existsSync(path.join(tmp, "experts512"))
    ? path.join(tmp, "experts512")
    : randomModel("experts512", ["hidden_size=512", "num_experts=32", "moe_intermediate_size=256", "intermediate_size=1024"]);

test("the plan holds: NVFP4 with GPTQ on worker threads (it peaked at 1.6x the plan)", () => holds(experts512(), "NVFP4"));

test("the plan holds: MoE layers in groups of 5 experts", () => holds(experts512(), "W4A16", 5));

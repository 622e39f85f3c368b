/**
 * An MoE layer run one expert group at a time writes the bytes of the layer run whole: every
 * family, GPTQ and a static-activation scheme, group sizes 1 and 3 (which divides no family's expert
 * count); moecal.json and coverage.svg included. A group's weights load into the arrays of the group before.
 */
import { test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import { oneshot } from "../../src/pipeline/oneshot.js";
import type { OneshotOptions } from "../../src/pipeline/oneshot.js";
import { plan } from "../../src/pipeline/plan.js";
import type { LayerPlan, Plan } from "../../src/pipeline/plan-types.js";
import { randomModel } from "../../src/pipeline/random-model.js";
import { UsageError } from "../../src/errors.js";
import { WeightRecycler } from "../../src/nn/weights.js";
import assert from "node:assert/strict";
import { ROOT, TINY, assertSameFiles, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-groups-");
const FAMILIES: [string, string][] = [
  ["afmoe", TINY],
  ...["qwen3_moe", "mixtral", "glm4_moe", "deepseek_v3-fp8", "minimax_m2", "qwen3_next", "qwen3_5_moe"].map(
    (f) => [f, path.join(ROOT, "test", "fixtures", `tiny-${f}`)] as [string, string],
  ),
];

/** Run oneshot; the groups it ran, as "layer:first-end". */
async function run(name: string, opts: OneshotOptions): Promise<{ output: string; groups: string[] }> {
  const groups: string[] = [];
  const r = await oneshot({
    numSamples: 4,
    maxSeqLength: 24,
    output: path.join(tmp, name),
    warn: () => undefined,
    ...opts,
    onProgress: (e) => {
      if (e.kind === "expert-group") groups.push(`${e.layer}:${e.first}-${e.end}`);
      opts.onProgress?.(e);
    },
  });
  return { output: r.output, groups };
}

/** The groups of `size` of a model's E experts, in each MoE layer the run grouped (at least one). */
function assertGroups(groups: string[], model: string, size: number): void {
  const raw = JSON.parse(fs.readFileSync(path.join(model, "config.json"), "utf8"));
  const c = raw.text_config ?? raw;
  const E: number = c.num_experts ?? c.n_routed_experts ?? c.num_local_experts;
  const layers = [...new Set(groups.map((g) => Number(g.split(":")[0])))];
  assert.ok(layers.length > 0, "no layer ran in expert groups");
  const want = layers.flatMap((l) =>
    Array.from({ length: Math.ceil(E / size) }, (_, g) => `${l}:${g * size}-${Math.min(E, (g + 1) * size)}`),
  );
  assert.deepEqual(groups, want);
}

for (const [family, model] of FAMILIES)
  test(`${family}: expert groups of 1 and 3 write the whole layer's bytes (GPTQ W4A16)`, async () => {
    const whole = await run(`${family}-whole`, { model });
    assert.deepEqual(whole.groups, []);
    for (const g of [1, 3]) {
      const { result: grouped, reused } = await countingReuse(() => run(`${family}-g${g}`, { model, expertGroupSize: g }));
      assertGroups(grouped.groups, model, g);
      assertSameFiles(grouped.output, whole.output);
      // each group after a layer's first loads into the arrays of the group before it
      const later = grouped.groups.filter((s) => !s.includes(":0-")).length;
      assert.ok(reused >= later, `${reused} arrays reused over ${later} groups after the first`);
    }
  });

/** Run `f`, counting the float32 arrays weight loads took from a WeightRecycler. */
async function countingReuse<T>(f: () => Promise<T>): Promise<{ result: T; reused: number }> {
  const take = WeightRecycler.prototype.take;
  let reused = 0;
  WeightRecycler.prototype.take = function (this: WeightRecycler, n: number) {
    const a = take.call(this, n);
    if (a) reused++;
    return a;
  };
  try {
    return { result: await f(), reused };
  } finally {
    WeightRecycler.prototype.take = take;
  }
}

const OPTIONS: [string, OneshotOptions][] = [
  ["NVFP4 (static input global scales, shared global scales)", { scheme: "NVFP4" }],
  ["FP8 (static input scales), round-to-nearest with calibration", { scheme: "FP8", method: "rtn", calibrate: true }],
  ["router-aware statistics", { expertStatistics: "unrouted:0.25", routedWeight: "score" }],
  ["routed tokens only", { calibrateAllExperts: false }],
  // 3 tokens reach at most 6 of 8 experts: the others take the whole layer's largest input scale
  ["FP8 with routed tokens only (experts without rows)", { scheme: "FP8", calibrateAllExperts: false, numSamples: 1, maxSeqLength: 3 }],
  ["without the fast path", { fastPath: false }],
  ["shards of 24 tokens (the non-expert statistics summed shard by shard)", { shardTokens: 24 }],
  ["a recipe of two schemes", { scheme: ["re:.*experts.*=W4A16", "W8A16"] }],
  ["the routed experts left unquantized", { ignore: ["re:.*mlp\\.experts\\..*"] }],
];
for (const family of ["qwen3_moe", "glm4_moe"]) {
  const model = path.join(ROOT, "test", "fixtures", `tiny-${family}`);
  test(`${family}: expert groups of 3 write the whole layer's bytes: ${OPTIONS.map(([n]) => n).join("; ")}`, async () => {
    for (const [k, [what, opts]] of OPTIONS.entries()) {
      const whole = await run(`${family}-o${k}-whole`, { model, ...opts });
      const grouped = await run(`${family}-o${k}-g3`, { model, expertGroupSize: 3, ...opts });
      assertGroups(grouped.groups, model, 3);
      assert.doesNotThrow(() => assertSameFiles(grouped.output, whole.output), what);
    }
  });
}

test("an MoE layer larger than --max-memory runs in the largest expert groups that fit, with the whole layer's bytes; one that cannot fit is refused", async () => {
  // one MoE layer of 16 experts of 512 x 1024: about 15 MB each in float32, as read, codes and Hessians
  const model = randomModel({
    output: path.join(tmp, "wide"),
    like: path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe"),
    layers: 1,
    set: ["hidden_size=512", "moe_intermediate_size=1024", "num_experts=16", "head_dim=128"],
  }).output;
  const base = { model, numSamples: 4, maxSeqLength: 24 };
  const whole = await plan({ ...base, maxMemory: 2 ** 50 });
  const one = await plan({ ...base, expertGroupSize: 1 });
  const layer = (p: Plan): LayerPlan => p.layers[0] as LayerPlan;
  assert.equal(layer(whole).expert_groups, null);
  assert.equal(layer(one).expert_groups?.size, 1);
  // beside the process itself, whose size changes from one plan to the next
  const saved = layer(whole).peak_memory_bytes - whole.baseline_bytes - (layer(one).peak_memory_bytes - one.baseline_bytes);
  assert.ok(saved > 200 * 1024 ** 2, `15 experts fewer save ${saved} bytes`);
  // a limit the whole layer exceeds by half of what grouping saves
  const maxMemory = Math.round(layer(whole).peak_memory_bytes - saved / 2);
  let planned: Plan | null = null;
  const grouped = await run("wide-limited", {
    ...base,
    maxMemory,
    onProgress: (e) => {
      if (e.kind === "plan") planned = e.plan;
    },
  });
  const g = layer(planned as unknown as Plan).expert_groups;
  assert.ok(g && g.size > 1 && g.size < 16, `group size ${g?.size}`);
  assert.ok(layer(planned as unknown as Plan).peak_memory_bytes <= maxMemory);
  assertGroups(grouped.groups, model, g.size);
  assertSameFiles(grouped.output, (await run("wide-whole", { ...base, maxMemory: 2 ** 50 })).output);
  await assert.rejects(
    run("wide-refused", { ...base, maxMemory: Math.round(layer(one).peak_memory_bytes - saved / 2) }),
    (e: Error) => e instanceof UsageError && /more than --max-memory/.test(e.message),
  );
});

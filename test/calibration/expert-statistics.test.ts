/**
 * Router-aware expert statistics (--expert-statistics, --routed-weight) for every family, on
 * layer 1's MoE block of each tiny checkpoint, against the fixtures' PyTorch reference Hessians
 * (all-token and routed-only) and, for combine-weighted rows, a float64 sum computed here from
 * the reference's routing.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import {
  type ExpertStatisticsOptions,
  SEED_STATISTICS,
  parseExpertStatistics,
  parseRoutedWeight,
} from "../../src/calibration/expert-statistics.js";
import { type HessianStats, attachHessianObservers } from "../../src/calibration/observers.js";
import { calibrationFactoryFor } from "../../src/calibration/registry.js";
import { SafetensorsFile, rawToInts } from "../../src/io/safetensors.js";
import type { AnyModule } from "../../src/nn/module.js";
import { asMoeBlock } from "../../src/nn/moe.js";
import { Tensor } from "../../src/engine/tensor.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { openServed } from "../../src/pipeline/serving.js";
import { UsageError } from "../../src/errors.js";
import { GOLDEN, ROOT, TEXT, TINY, assertClose, tempDir } from "../helpers.js";

const FAMILIES = [
  { type: "afmoe", dir: TINY, golden: GOLDEN, block: "mlp", gate: "gate_proj", down: "down_proj" },
  { type: "qwen3_moe", block: "mlp", gate: "gate_proj", down: "down_proj" },
  { type: "mixtral", block: "block_sparse_moe", gate: "w1", down: "w2" },
  { type: "glm4_moe", block: "mlp", gate: "gate_proj", down: "down_proj" },
].map((f) => {
  const dir = f.dir ?? path.join(ROOT, "test", "fixtures", `tiny-${f.type}`);
  return { ...f, dir, golden: f.golden ?? path.join(dir, "golden") };
});

const stats = (s: string, w = "one"): ExpertStatisticsOptions => ({
  statistics: parseExpertStatistics(s),
  routedWeight: parseRoutedWeight(w),
});

for (const f of FAMILIES) {
  const g = SafetensorsFile.open(path.join(f.golden, "moe-layer1.safetensors"));
  const { model, config } = openServed(f.dir);
  const moe = model.getSubmodule(`model.layers.1.${f.block}`);
  const x = g.readF32("x");
  const H = x.dim(-1);
  const selected = rawToInts(g.readRaw("selected_experts"), "selected_experts");
  const top = g.readF32("top_scores");
  const K = top.dim(-1);
  const T = top.size / K;
  const E = asMoeBlock(moe)?.routedExperts().length ?? 0;
  const ref = (mode: "all" | "routed", e: number, p: string): Float32Array => g.readF32(`${mode}.experts.${e}.${p}.H`).data;
  const routedCount = (e: number): number => rawToInts(g.readRaw(`routed.experts.${e}.${f.gate}.tokens`), "tokens")[0] as number;

  /** Every expert Linear's statistics after one call of the calibration module. */
  async function observe(
    s: ExpertStatisticsOptions | undefined,
    calibrateAllExperts: boolean,
    fastPath: boolean,
    input: Tensor = x,
  ): Promise<Map<string, HessianStats>> {
    const factory = calibrationFactoryFor(moe.className);
    assert.ok(factory);
    const calib = factory(moe, config, { calibrateAllExperts, fastPath }) as AnyModule & { call(x: unknown): Promise<unknown> };
    const isExpertLinear = (n: string): boolean => /^experts\.\d+\./.test(n);
    const obs = s ? attachHessianObservers(calib, isExpertLinear, "", s) : attachHessianObservers(calib, isExpertLinear);
    try {
      await calib.call(input);
    } finally {
      obs.remove();
    }
    return obs.stats;
  }
  const at = (m: Map<string, HessianStats>, e: number, p: string): HessianStats => {
    const s = m.get(`experts.${e}.${p}`);
    assert.ok(s, `experts.${e}.${p} observed`);
    return s;
  };

  test(`${f.type}: uniform with routed weight one is exactly the seed's statistics, on both paths`, async () => {
    for (const fastPath of [true, false]) {
      const seed = await observe(undefined, true, fastPath);
      const explicit = await observe(stats("uniform", "one"), true, fastPath);
      for (let e = 0; e < E; e++)
        for (const p of [f.gate, f.down]) {
          assert.deepEqual(at(explicit, e, p).H, at(seed, e, p).H, `experts.${e}.${p}`);
          assertClose(`experts.${e}.${p}.H vs reference`, at(explicit, e, p).H, ref("all", e, p), 1e-5);
          assert.equal(at(explicit, e, p).allTokenFallback, false);
        }
    }
  });

  const SETTINGS: [string, string][] = [
    ["unrouted:0.3", "one"],
    ["unrouted:0", "score"],
    ["uniform", "score2"],
    ["shrink:16", "one"],
    ["shrink:4", "score"],
  ];
  for (const [setting, weight] of SETTINGS) {
    test(`${f.type}: ${setting} with ${weight}: the fast and per-expert paths give the same Hessians`, async () => {
      const fast = await observe(stats(setting, weight), true, true);
      const slow = await observe(stats(setting, weight), true, false);
      for (let e = 0; e < E; e++)
        for (const p of [f.gate, f.down]) {
          assert.equal(at(fast, e, p).rows, at(slow, e, p).rows);
          assert.equal(at(fast, e, p).routedRows, at(slow, e, p).routedRows);
          assertClose(`experts.${e}.${p}.H fast vs per-expert`, at(fast, e, p).H, at(slow, e, p).H, 1e-5);
        }
    });
  }

  test(`${f.type}: unrouted:0 with one is the routed-only reference Hessian`, async () => {
    for (const fastPath of [true, false]) {
      const m = await observe(stats("unrouted:0"), true, fastPath);
      for (let e = 0; e < E; e++)
        for (const p of [f.gate, f.down]) {
          const s = at(m, e, p);
          assert.equal(s.routedRows, routedCount(e));
          if (routedCount(e) > 0) assertClose(`experts.${e}.${p}`, s.H, ref("routed", e, p), 1e-5);
        }
    }
  });

  test(`${f.type}: an expert no token is routed to keeps exactly its all-token statistics, on both paths`, async () => {
    // three tokens reach at most 3K experts: the others have no routed row
    const few = new Tensor(x.data.slice(0, 3 * H), [3, H]);
    for (const fastPath of [true, false]) {
      const seed = await observe(undefined, true, fastPath, few);
      for (const setting of ["unrouted:0", "shrink:4"]) {
        const m = await observe(stats(setting, "score"), true, fastPath, few);
        let starved = 0;
        for (let e = 0; e < E; e++)
          for (const p of [f.gate, f.down]) {
            const s = at(m, e, p);
            assert.equal(s.allTokenFallback, s.routedRows === 0);
            if (s.routedRows !== 0) continue;
            starved++;
            assert.deepEqual(s.H, at(seed, e, p).H, `experts.${e}.${p}`);
          }
        assert.ok(starved >= 2 * (E - 3 * K), `${starved} starved Linears`);
      }
    }
  });

  test(`${f.type}: unrouted:0.1 and shrink:8 combine the reference's all-token and routed Hessians as defined`, async () => {
    const un = await observe(stats("unrouted:0.1"), true, true);
    const sh = await observe(stats("shrink:8"), true, true);
    for (let e = 0; e < E; e++) {
      const n = routedCount(e);
      if (n === 0) continue;
      for (const p of [f.gate, f.down]) {
        const all = ref("all", e, p);
        const routed = ref("routed", e, p);
        assertClose(
          `unrouted:0.1 experts.${e}.${p}`,
          at(un, e, p).H,
          all.map((v, i) => 0.1 * v + 0.9 * (routed[i] as number)),
          1e-5,
        );
        assertClose(
          `shrink:8 experts.${e}.${p}`,
          at(sh, e, p).H,
          all.map((v, i) => ((routed[i] as number) / n) * (n / (n + 8)) + (v / T) * (8 / (n + 8))),
          1e-5,
        );
      }
    }
  });

  test(`${f.type}: routed weight score and score2 weight each routed row of gate/up by the combine weight (float64 reference)`, async () => {
    for (const [w, power] of [
      ["score", 1],
      ["score2", 2],
    ] as const) {
      const m = await observe(stats("unrouted:0", w), true, true);
      for (let e = 0; e < E; e++) {
        const expected = new Float64Array(H * H);
        for (let t = 0; t < T; t++)
          for (let k = 0; k < K; k++) {
            if (selected[t * K + k] !== e) continue;
            const wt = 2 * (top.data[t * K + k] as number) ** power;
            for (let i = 0; i < H; i++)
              for (let j = 0; j < H; j++)
                expected[i * H + j] = (expected[i * H + j] as number) + wt * (x.data[t * H + i] as number) * (x.data[t * H + j] as number);
          }
        if (routedCount(e) > 0) assertClose(`${w} experts.${e}.${f.gate}`, at(m, e, f.gate).H, expected, 1e-5);
      }
    }
  });

  test(`${f.type}: calibrating routed tokens only, unrouted:ALPHA changes nothing (every row is routed)`, async () => {
    const m = await observe(stats("unrouted:0.3"), false, false);
    for (let e = 0; e < E; e++)
      for (const p of [f.gate, f.down]) {
        const s = at(m, e, p);
        if (routedCount(e) > 0) assertClose(`experts.${e}.${p}`, s.H, ref("routed", e, p), 1e-5);
        else assert.equal(s.rows, 0);
      }
  });
}

test("the settings parse and bad ones are usage errors naming the option", () => {
  assert.deepEqual(parseExpertStatistics("unrouted:0.03"), { kind: "unrouted", alpha: 0.03 });
  assert.deepEqual(parseExpertStatistics("shrink:64"), { kind: "shrink", k: 64 });
  assert.deepEqual(parseExpertStatistics("uniform"), SEED_STATISTICS.statistics);
  for (const bad of ["unrouted:1.5", "unrouted:-0.1", "unrouted:", "shrink:0", "shrink:x", "unrouted:0x10", "routed", "uniform:1"])
    assert.throws(
      () => parseExpertStatistics(bad),
      (e: unknown) => e instanceof UsageError && e.message.includes("--expert-statistics"),
      bad,
    );
  assert.throws(() => parseRoutedWeight("two"), UsageError);
});

test("oneshot records the statistics and the experts that kept all-token statistics in moecal.json; the CLI refuses a bad setting with exit 2", async () => {
  const tmp = tempDir("moecal-stats-");
  const { report } = await oneshot({
    scheme: "W4A16",
    groupSize: 32,
    numSamples: 4,
    maxSeqLength: 64,
    dataset: path.join(TEXT, "eval-json.jsonl"),
    expertStatistics: "unrouted:0",
    routedWeight: "score",
    output: path.join(tmp, "out"),
    warn: () => undefined,
  });
  assert.equal(report.expert_statistics?.setting, "unrouted:0");
  assert.equal(report.expert_statistics?.routed_weight, "score");
  // on this narrow calibration set some experts are never routed a token: they keep all-token statistics
  const starved = Object.entries(report.coverage.layers).flatMap(([l, c]) =>
    c.routed.flatMap((n, e) => (n === 0 ? [`model.layers.${l}.mlp.experts.${e}.`] : [])),
  );
  assert.ok(starved.length > 0);
  for (const s of starved) assert.equal((report.expert_statistics?.all_token_fallbacks ?? []).filter((n) => n.startsWith(s)).length, 3, s);
  assert.equal(report.expert_statistics?.all_token_fallbacks.length, 3 * starved.length);
  const onDisk = JSON.parse(fs.readFileSync(path.join(tmp, "out", "moecal.json"), "utf8")) as typeof report;
  assert.deepEqual(onDisk.expert_statistics, report.expert_statistics);

  const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
  const r = spawnSync(process.execPath, [cli, "oneshot", "--expert-statistics", "unrouted:2", "--output", path.join(tmp, "bad")], {
    encoding: "utf8",
  });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--expert-statistics "unrouted:2"/);
  assert.equal(fs.existsSync(path.join(tmp, "bad")), false);
});

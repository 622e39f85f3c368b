import { test } from "node:test";
import assert from "node:assert/strict";
import { Linear } from "../../src/nn/layers.js";
import { HessianStats } from "../../src/calibration/observers.js";
import { GramAccumulator } from "../../src/calibration/gram.js";
import { GPTQ_WORKER_MIN_WEIGHTS, type QuantizedLinear, quantizeLayerLinears } from "../../src/pipeline/quantize-layer.js";
import { type GptqJob, closeSharedGptqPool, gptqPool, runGptqJob, sharedGptqPool } from "../../src/quantization/gptq-pool.js";
import { dequantize } from "../../src/quantization/params.js";
import { rtnQuantize } from "../../src/quantization/gptq.js";
import { resolveScheme } from "../../src/quantization/scheme.js";
import { randn } from "../rand.js";
import { UsageError } from "../../src/errors.js";

const W4A16 = resolveScheme("W4A16");
const W4A16_G8 = resolveScheme("W4A16", { groupSize: 8 });
const FP8 = resolveScheme("FP8");
const OPTS = { dampening: 0.01, blockSize: 128, warn: () => undefined, layerLabel: "layer 1" };

/** 8 Linears [512, 1024] sharing one Hessian (4M weights: large enough for worker threads) and one [256, 256] with its own. */
async function layer(): Promise<{ linears: Map<string, Linear>; hessians: Map<string, HessianStats> }> {
  const linears = new Map<string, Linear>();
  const hessians = new Map<string, HessianStats>();
  const shared = new GramAccumulator(1024);
  await shared.add(randn([600, 1024], 1));
  for (let e = 0; e < 8; e++) {
    const lin = new Linear(1024, 512);
    lin.parameter("weight").value = randn([512, 1024], 10 + e, 0.02);
    const s = new HessianStats(1024);
    s.shareWith(shared);
    linears.set(`experts.${e}.gate_proj`, lin);
    hessians.set(`experts.${e}.gate_proj`, s);
  }
  const down = new Linear(256, 256);
  down.parameter("weight").value = randn([256, 256], 30, 0.02);
  const s = new HessianStats(256);
  await s.own.add(randn([300, 256], 31));
  linears.set("experts.0.down_proj", down);
  hessians.set("experts.0.down_proj", s);
  return { linears, hessians };
}

/** `fn` with MOECAL_GPTQ_WORKERS set to `workers`; the variable restored and the shared pool closed after. */
async function withGptqWorkers<T>(workers: string, fn: () => Promise<T>): Promise<T> {
  const before = process.env.MOECAL_GPTQ_WORKERS;
  process.env.MOECAL_GPTQ_WORKERS = workers;
  try {
    return await fn();
  } finally {
    if (before === undefined) delete process.env.MOECAL_GPTQ_WORKERS;
    else process.env.MOECAL_GPTQ_WORKERS = before;
    await closeSharedGptqPool();
  }
}

/** quantizeLayerLinears of a layer() with W4A16 GPTQ for every Linear. */
function quantizeW4A16(l: Awaited<ReturnType<typeof layer>>, opts: Parameters<typeof quantizeLayerLinears>[4] = OPTS) {
  return quantizeLayerLinears(
    { ...l, inputAbsMax: new Map() },
    () => W4A16,
    () => "gptq",
    "BF16",
    opts,
  );
}

function run(workers: string): Promise<{ results: QuantizedLinear[]; linears: Map<string, Linear> }> {
  return withGptqWorkers(workers, async () => {
    const l = await layer();
    let total = 0;
    for (const lin of l.linears.values()) total += lin.weight.size;
    assert.ok(total >= GPTQ_WORKER_MIN_WEIGHTS, "the layer must be large enough for the worker path");
    const { results, fallbacks } = await quantizeW4A16(l);
    assert.deepEqual(fallbacks, []);
    return { results, linears: l.linears };
  });
}

test("a layer's GPTQ on worker threads equals the main thread's; every Linear ends with its own dequantized weights", async () => {
  const threaded = await run("2");
  const local = await run("0");
  for (const { results, linears } of [threaded, local]) {
    for (const r of results) {
      const w = (linears.get(r.name) as Linear).weight.data;
      assert.equal(w.byteLength, w.buffer.byteLength, `${r.name}: weight is a view into a larger buffer`);
      const dq = dequantize(r.weight);
      let diff = 0;
      for (let i = 0; i < dq.length; i++) diff = Math.max(diff, Math.abs((dq[i] as number) - (w[i] as number)));
      assert.equal(diff, 0, `${r.name}: weight differs from dequantize(codes) by up to ${diff}`);
    }
  }
  for (const [i, a] of threaded.results.entries()) {
    const b = local.results[i] as QuantizedLinear;
    assert.equal(a.name, b.name);
    assert.deepEqual(a.weight.params.scale, b.weight.params.scale, `${a.name}: scales`);
    let same = 0;
    for (const [k, c] of a.weight.codes.entries()) same += c === b.weight.codes[k] ? 1 : 0;
    assert.ok(same / a.weight.codes.length >= 0.999, `${a.name}: only ${same} of ${a.weight.codes.length} codes equal`);
  }
});

test("after a layer's GPTQ on the shared worker pool, that pool is replaced by fresh workers of the same number (a worker's memory does not reach the next layer), unless the caller keeps them for a call of the same widths", async () => {
  await withGptqWorkers("2", async () => {
    const l = await layer();
    const used = await sharedGptqPool(2);
    await quantizeW4A16(l);
    const next = await sharedGptqPool(2);
    assert.notEqual(next, used, "the layer's pool is still the shared one");
    assert.equal(next.size, 2);
    // a caller whose next call has the same widths (the layer's next expert group) keeps the workers
    await quantizeW4A16(await layer(), { ...OPTS, keepWorkers: true });
    assert.equal(await sharedGptqPool(2), next, "the workers were renewed though kept for the next call");
    // a pool the caller gave is left as it is
    const own = await sharedGptqPool(2);
    const given = gptqPool(1);
    await quantizeW4A16(await layer(), { ...OPTS, pool: given });
    await given.close();
    assert.equal(await sharedGptqPool(2), own);
  });
});

test("a Hessian that is not positive definite after damping: round-to-nearest for that Linear, recorded as cholesky-failed", async () => {
  const n = 8;
  const lin = new Linear(n, 4);
  lin.parameter("weight").value = randn([4, n], 41, 0.02);
  const original = Float32Array.from(lin.weight.data);
  const s = new HessianStats(n);
  // all ones minus half the identity: eigenvalues 7.5 and -0.5; 1% damping cannot make it positive definite
  s.own.addGram(
    Float32Array.from({ length: n * n }, (_, k) => (k % (n + 1) === 0 ? 0.5 : 1)),
    10,
  );
  const { results, fallbacks } = await quantizeLayerLinears(
    { linears: new Map([["experts.0.up_proj", lin]]), hessians: new Map([["experts.0.up_proj", s]]), inputAbsMax: new Map() },
    () => W4A16_G8,
    () => "gptq",
    "BF16",
    OPTS,
  );
  assert.deepEqual(fallbacks, [{ module: "experts.0.up_proj", reason: "cholesky-failed", action: "round-to-nearest" }]);
  const rtn = rtnQuantize(original, 4, n, resolveScheme("W4A16", { groupSize: 8 }).weights, "BF16", "x");
  assert.deepEqual(Array.from(results[0]?.weight.codes ?? []), Array.from(rtn.codes));
});

test("a static-activation Linear that saw no rows takes the largest input scale of the layer's other Linears, recorded as no-activation-rows", async () => {
  const a = new Linear(8, 4);
  const b = new Linear(8, 4);
  a.parameter("weight").value = randn([4, 8], 42, 0.02);
  b.parameter("weight").value = randn([4, 8], 43, 0.02);
  const { results, fallbacks } = await quantizeLayerLinears(
    {
      linears: new Map([
        ["experts.0.up_proj", a],
        ["experts.1.up_proj", b],
      ]),
      hessians: new Map(),
      inputAbsMax: new Map([
        ["experts.0.up_proj", { absmax: 44.8, rows: 3 }],
        ["experts.1.up_proj", { absmax: 0, rows: 0 }],
      ]),
    },
    () => FP8,
    () => "rtn",
    "F32",
    OPTS,
  );
  assert.deepEqual(fallbacks, [
    { module: "experts.1.up_proj", reason: "no-activation-rows", action: "largest input scale of the layer's other Linears" },
  ]);
  assert.equal(results[0]?.inputScale, Math.fround(44.8 / 448));
  assert.equal(results[1]?.inputScale, results[0]?.inputScale);
});

test("a GPTQ job that fails on a worker reaches the caller as its typed error, while later jobs wait for a worker (no unhandled rejection)", async () => {
  await withGptqWorkers("2", async () => {
    const { linears, hessians } = await layer();
    // a group size that divides no input: every job fails inside its worker, the first while later ones are still queued
    const scheme = resolveScheme("W4A16");
    scheme.weights.groupSize = 48;
    await assert.rejects(
      quantizeLayerLinears(
        { linears, hessians, inputAbsMax: new Map() },
        () => scheme,
        () => "gptq",
        "BF16",
        OPTS,
      ),
      (e: unknown) => e instanceof UsageError && /group size 48 does not divide the input size 1024/.test(e.message),
    );
  });
});

test("a layer's first GPTQ job is submitted before the Hessians of its later groups are made; Linears sharing an accumulator share one group", async () => {
  let made = 0;
  /** HessianStats counting the Hessians asked of it */
  class Counted extends HessianStats {
    override get H(): Float32Array {
      made++;
      return super.H;
    }
    override takeH(): Float32Array {
      made++;
      return super.takeH();
    }
  }
  const linears = new Map<string, Linear>();
  const hessians = new Map<string, HessianStats>();
  const shared = new GramAccumulator(64);
  await shared.add(randn([200, 64], 40));
  for (const [i, name] of ["q_proj", "k_proj", "gate_proj", "up_proj"].entries()) {
    const lin = new Linear(64, 32);
    lin.parameter("weight").value = randn([32, 64], 41 + i, 0.02);
    const s = new Counted(64);
    if (i >= 2) s.shareWith(shared);
    else await s.own.add(randn([200, 64], 50 + i));
    linears.set(name, lin);
    hessians.set(name, s);
  }
  assert.equal(hessians.get("gate_proj")?.hessianKey(), hessians.get("up_proj")?.hessianKey());
  assert.notEqual(hessians.get("q_proj")?.hessianKey(), hessians.get("k_proj")?.hessianKey());
  const madeAtSubmit: number[] = [];
  const jobRows: number[] = [];
  const pool = {
    submit: async (make: () => GptqJob) => {
      madeAtSubmit.push(made);
      const job = make();
      jobRows.push(job.out);
      return { result: runGptqJob(job) };
    },
  };
  const { fallbacks } = await quantizeLayerLinears(
    { linears, hessians, inputAbsMax: new Map() },
    () => W4A16_G8,
    () => "gptq",
    "BF16",
    {
      ...OPTS,
      pool,
    },
  );
  assert.deepEqual(fallbacks, []);
  // q_proj's Hessian only (then k_proj's, then the one gate and up share, asked of both)
  assert.deepEqual(madeAtSubmit, [1, 2, 4]);
  assert.deepEqual(jobRows, [32, 32, 64], "gate and up are not one stacked job");
});

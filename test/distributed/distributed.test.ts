/**
 * Distributed runs on a real nats-server with real worker processes (`moecal worker`): the output
 * of `oneshot --nats` with 1, 2 or 3 workers is the local run's, byte for byte; a worker killed
 * mid-job has its job redelivered; a killed coordinator resumes from the bucket's job states; a
 * worker refuses a run of another version, another model, or outside its --shared-dir. Skipped,
 * with a message saying how to enable them, where nats-server is not installed.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, TEXT, assertSameFiles, tempDir } from "../helpers.js";
import { NATS_SKIP, type NatsServer, startNats } from "./nats-server.js";

const CLI = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = tempDir("moecal-distributed-");
const server: NatsServer | null = NATS_SKIP ? null : await startNats(path.join(tmp, "jetstream"));
/** Every process a test started: killed at the end, so that a failed test leaves none behind. */
const live: ChildProcess[] = [];
after(async () => {
  for (const p of live) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await server?.stop();
});
const skip = NATS_SKIP;

/** A fixture model copied into the shared folder (workers read only there). */
function shared(fixture: string): string {
  const dir = path.join(tmp, "shared", fixture);
  if (!fs.existsSync(dir)) fs.cpSync(path.join(ROOT, "test", "fixtures", fixture), dir, { recursive: true });
  return dir;
}

/** A recipe file of two schemes (GPTQ), its text sent to the workers in the run's manifest. */
const recipe = path.join(tmp, "two-schemes.yaml");
fs.writeFileSync(
  recipe,
  'quant_stage:\n  quant_modifiers:\n    GPTQModifier:\n      ignore: ["lm_head"]\n      dampening_frac: 0.05\n      scheme: {W4A16: ["re:.*experts.*"], W8A16: ["Linear"]}\n',
);

const RUN = ["--dataset", path.join(TEXT, "eval-json.jsonl"), "--num-samples", "4", "--max-seq-length", "32"];

interface Proc {
  proc: ChildProcess;
  out: string[];
  err: string[];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** A moecal process; `onLine` sees each line of its stdout and stderr as it comes. */
function moecal(args: string[], onLine?: (line: string, p: Proc) => void): Proc {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  live.push(proc);
  const p: Proc = {
    proc,
    out: [],
    err: [],
    exit: new Promise((resolve) => proc.once("close", (code, signal) => resolve({ code, signal }))),
  };
  for (const [stream, lines] of [
    [proc.stdout, p.out],
    [proc.stderr, p.err],
  ] as const) {
    let rest = "";
    stream?.on("data", (d: Buffer) => {
      const parts = (rest + String(d)).split("\n");
      rest = parts.pop() ?? "";
      for (const l of parts) {
        lines.push(l);
        onLine?.(l, p);
      }
    });
  }
  return p;
}

/** A worker; `onEvent` sees each of its JSON events as it comes. */
const worker = (onEvent?: (e: Record<string, unknown>, p: Proc) => void): Proc =>
  moecal(["worker", "--nats", server?.url ?? "", "--shared-dir", path.join(tmp, "shared"), "--json", "--workers", "0"], (line, p) => {
    if (line.startsWith("{")) onEvent?.(JSON.parse(line) as Record<string, unknown>, p);
  });

/** Stop workers (SIGTERM) and return their JSON events. */
async function stopAll(workers: Proc[]): Promise<Record<string, unknown>[]> {
  for (const w of workers) w.proc.kill("SIGTERM");
  await Promise.all(workers.map((w) => w.exit));
  return workers.flatMap((w) => w.out.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>));
}

/** The local run's output, the reference every distributed run must equal byte for byte. */
function local(name: string, args: string[]): string {
  const out = path.join(tmp, "shared", `${name}-local`);
  if (fs.existsSync(out)) return out;
  const r = spawnSync(process.execPath, [CLI, "oneshot", ...args, "--output", out, "--quiet"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return out;
}

const coordinator = (out: string, args: string[], onLine?: (line: string, p: Proc) => void): Proc =>
  moecal(["oneshot", ...args, "--output", out, "--nats", server?.url ?? "", "--job-timeout", "3"], onLine);

for (const [fixture, extra, counts] of [
  // shards of at most 40 tokens: the samples of up to 32 tokens in several token-shard jobs
  ["tiny-qwen3_moe", ["--expert-group-size", "3", "--shard-tokens", "40"], [1, 2, 3]],
  ["tiny-deepseek_v3-fp8", ["--shard-tokens", "48"], [2]],
  ["tiny-glm4_moe", ["--recipe", recipe], [2]],
] as const) {
  for (const n of counts)
    test(`${fixture}${extra.length ? ` (${extra.join(" ").replace(/\S*\//g, "")})` : ""} with ${n} worker(s): the local run's bytes`, {
      skip,
    }, async () => {
      const args = ["--model", shared(fixture), ...RUN, ...extra];
      const reference = local(`${fixture}-${extra.length}`, args);
      const workers = Array.from({ length: n }, () => worker());
      const out = path.join(tmp, "shared", `${fixture}-${extra.length}-${n}`);
      const c = coordinator(out, args);
      const { code } = await c.exit;
      const events = await stopAll(workers);
      assert.equal(code, 0, c.err.join("\n"));
      const queued = (what: string): number =>
        c.err.reduce((a, l) => a + Number(new RegExp(`: (\\d+) ${what} job\\(s\\) queued`).exec(l)?.[1] ?? 0), 0);
      const [groups, shards] = [queued("expert group"), queued("token shard")];
      assert.ok(groups > 0 && shards > 0, `the coordinator queued expert group and token shard jobs: ${c.err.join("\n")}`);
      if (extra.includes("--shard-tokens"))
        assert.ok(
          c.err.some((l) => /: [2-9]\d* token shard job\(s\) queued/.test(l)),
          "several token shards a phase",
        );
      // the non-expert Linears' GPTQ, a job each
      const gptq = c.err.filter((l) => /: GPTQ of model\.layers\.\d+\.\S+ done by /.test(l)).length;
      assert.ok(gptq > 0, "GPTQ jobs ran");
      // DeepSeek-V3's and GLM-4.5's first layer is dense: its shards and GPTQ are jobs too
      if (!fixture.includes("qwen3"))
        assert.ok(
          c.err.some((l) => /layer 1\/3: GPTQ of model\.layers\.0\.mlp\.down_proj done by /.test(l)),
          "the dense layer's GPTQ was a job",
        );
      assert.equal(events.filter((e) => e.kind === "job-done").length, groups + shards + gptq, "every job was done by a worker");
      assertSameFiles(out, reference);
    });
}

test("a worker killed (SIGKILL) mid-job: the server redelivers its job after --job-timeout to another worker, and the output is the local run's bytes", {
  skip,
}, async () => {
  // jobs of 1.5-2.5 s here: 8 experts of 512 x 1024 over 512 tokens, and their GPTQ
  const { randomModel } = await import("../../src/pipeline/random-model.js");
  const model = randomModel({
    output: path.join(tmp, "shared", "wide"),
    like: path.join(ROOT, "test", "fixtures", "tiny-qwen3_moe"),
    layers: 2,
    set: ["hidden_size=512", "moe_intermediate_size=1024", "num_experts=16", "head_dim=128"],
  }).output;
  const args = ["--model", model, ...RUN.slice(0, 2), "--num-samples", "8", "--max-seq-length", "64"];
  const reference = local("wide", args);
  const workers: Proc[] = [];
  let killed: Record<string, unknown> | null = null;
  workers.push(
    worker((e, p) => {
      // an expert group's job (seconds; a token shard's here takes milliseconds)
      if (e.kind !== "job-start" || killed || !String(e.job).startsWith("g")) return;
      p.proc.kill("SIGKILL");
      killed = e;
      workers.push(worker());
    }),
  );
  const out = path.join(tmp, "shared", "wide-killed-worker");
  const c = coordinator(out, [...args, "--expert-group-size", "8"]);
  const { code } = await c.exit;
  const first = workers[0] as Proc;
  const events = await stopAll(workers.slice(1));
  assert.equal(code, 0, c.err.join("\n"));
  assert.equal((await first.exit).signal, "SIGKILL");
  assert.ok(killed, "the first worker started a job");
  const k = killed as Record<string, unknown>;
  const doneBy = (p: Proc): Record<string, unknown>[] =>
    p.out.filter((l) => l.includes('"job-done"')).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.ok(!doneBy(first).some((e) => e.layer === k.layer && e.job === k.job), "the killed worker did not finish its job");
  const again = events.find((e) => e.kind === "job-start" && e.layer === k.layer && e.job === k.job);
  assert.ok(again, `another worker took layer ${k.layer} job ${k.job}`);
  assert.ok((again.delivery as number) >= 2, `redelivered (delivery ${again.delivery})`);
  assertSameFiles(out, reference);
});

test("the coordinator killed (SIGKILL) while its jobs run: rerun (even with another --expert-group-size), it resumes with the layer's groups, takes the shards, GPTQ jobs and groups the workers finished from the bucket, and writes the local run's bytes", {
  skip,
}, async () => {
  const args = ["--model", shared("tiny-qwen3_moe"), ...RUN, "--expert-group-size", "3"];
  const reference = local("tiny-qwen3_moe-2", args);
  const done: Record<string, unknown>[] = [];
  const workers = [1, 2].map(() =>
    worker((e) => {
      if (e.kind === "job-done" && String(e.job).startsWith("g")) done.push(e);
    }),
  );
  const out = path.join(tmp, "shared", "killed-coordinator");
  const first = coordinator(out, args, (line, p) => {
    if (/layer 2\/3: 3 expert group job\(s\) queued/.test(line)) p.proc.kill("SIGKILL");
  });
  assert.equal((await first.exit).signal, "SIGKILL", first.err.join("\n"));
  // the workers finish layer 1's three groups without the coordinator
  for (const t0 = Date.now(); done.filter((e) => e.layer === 1).length < 3; await new Promise((r) => setTimeout(r, 50)))
    assert.ok(Date.now() - t0 < 60_000, `the workers finished layer 1's groups (done: ${JSON.stringify(done)})`);
  const before = done.length;
  // another group size asked for: the layer keeps the groups it queued (saved before its jobs ran)
  const again = coordinator(out, [...args.slice(0, -1), "4"]);
  const { code } = await again.exit;
  await stopAll(workers);
  assert.equal(code, 0, again.err.join("\n"));
  assert.ok(
    again.err.some((l) => /resuming after layer 1\/3/.test(l)),
    again.err.join("\n"),
  );
  assert.ok(
    again.err.some((l) => /layer 2\/3: 0 expert group job\(s\) queued for the workers \(3 done before\)/.test(l)),
    again.err.join("\n"),
  );
  // the layer's token shards and GPTQ jobs finished before its groups were queued: taken from the
  // bucket too, but its output shards, which write into the new coordinator's own file
  for (const phase of ["calibrate", "propagate"])
    assert.ok(
      again.err.some((l) =>
        new RegExp(`layer 2/3: 0 token shard job\\(s\\) queued for the workers \\(${phase}\\) \\(1 done before\\)`).test(l),
      ),
      again.err.join("\n"),
    );
  assert.ok(again.err.some((l) => /layer 2\/3: 1 token shard job\(s\) queued for the workers \(output\)$/.test(l)));
  assert.ok(!again.err.some((l) => /layer 2\/3: GPTQ of /.test(l)), "no GPTQ job of layer 2 was done again");
  assert.ok(
    done.slice(before).every((e) => e.layer === 2),
    "no group of layer 1 was done again",
  );
  assertSameFiles(out, reference);
});

test("a worker refuses a run started by another moecal version, a run whose model differs on its host, and a run outside its --shared-dir (exit 2, naming why)", {
  skip,
}, async () => {
  const { connectNats, openBucket, ensureQueue, jobSubject, STREAM } = await import("../../src/distributed/nats.js");
  const { runManifest, runId } = await import("../../src/distributed/run-manifest.js");
  const { MOECAL_VERSION } = await import("../../src/paths.js");
  const { checkpointHash } = await import("../../src/io/hash.js");
  const model = shared("tiny-qwen3_moe");
  const sha = await checkpointHash(model, ["model.safetensors"]);
  const workDir = path.join(tmp, "shared", "refused-work");
  const outside = tempDir("moecal-outside-");
  fs.mkdirSync(workDir, { recursive: true });
  const nc = await connectNats({ url: server?.url ?? "" });
  try {
    const jsm = await ensureQueue(nc, 3);
    const kv = await openBucket(nc);
    const base = runManifest({}, { modelDir: model, modelSha: sha, workDir });
    for (const [manifest, why] of [
      [
        { ...base, moecal_version: "0.0.1" },
        new RegExp(`started by moecal 0\\.0\\.1 .*this worker is moecal ${MOECAL_VERSION.replace(/\./g, "\\.")}`),
      ],
      [{ ...base, model_sha256: "0".repeat(64) }, /the model at .* on this host is not the coordinator's/],
      [{ ...base, work_dir: outside }, /its work folder .* is outside --shared-dir/],
    ] as const) {
      const id = runId(manifest);
      await kv.put(`${id}.manifest`, JSON.stringify(manifest));
      await jsm.streams.purge(STREAM);
      const { jetstream } = await import("@nats-io/jetstream");
      await jetstream(nc).publish(
        jobSubject(id),
        JSON.stringify({ kind: "group", run: id, layer: 0, group: 0, first: 0, end: 3, size: 3, sums: true, shards: 0 }),
      );
      const w = worker();
      const { code } = await w.exit;
      assert.equal(code, 2, w.err.join("\n"));
      assert.match(w.err.join("\n"), why);
      assert.ok(!fs.readdirSync(workDir).length && !fs.readdirSync(outside).length, "nothing was written");
    }
    await jsm.streams.purge(STREAM);
  } finally {
    await nc.close();
  }
});

test("--nats refuses a data-free run and a server that is not there (its password not printed), and --job-timeout or --nats-* without --nats is a usage error", () => {
  const run = (args: string[]) =>
    spawnSync(process.execPath, [CLI, "oneshot", "--quiet", "--output", path.join(tmp, "refused"), ...args], { encoding: "utf8" });
  const dataFree = run(["--method", "rtn", "--nats", "nats://127.0.0.1:1"]);
  assert.equal(dataFree.status, 2, dataFree.stderr);
  assert.match(dataFree.stderr, /--nats distributes calibrated runs.*data-free.*--calibrate/);
  const away = run(["--nats", "nats://user:secret@127.0.0.1:1", "--num-samples", "1", "--max-seq-length", "8"]);
  assert.equal(away.status, 2, away.stderr);
  assert.match(away.stderr, /--nats nats:\/\/user:\*\*\*@127\.0\.0\.1:1: cannot connect/);
  assert.doesNotMatch(away.stderr, /secret/, "the password is not printed");
  const alone = run(["--job-timeout", "5"]);
  assert.equal(alone.status, 2, alone.stderr);
  assert.match(alone.stderr, /--job-timeout and --nats-\* options need --nats URL/);
  assert.ok(!fs.existsSync(path.join(tmp, "refused")));
});

test("a job that fails on a bad file (a link planted in the work folder) stops the run with the worker's error, naming the file; nothing is written", {
  skip,
}, async () => {
  const args = ["--model", shared("tiny-qwen3_moe"), ...RUN, "--expert-group-size", "3"];
  const out = path.join(tmp, "shared", "bad-job");
  const work = path.join(tmp, "shared", ".bad-job.moecal-work");
  const inputs = path.join(work, "embeddings.bin");
  const workers: Proc[] = [];
  const c = coordinator(out, args, (line) => {
    if (!/layer 1\/3: \d+ token shard job\(s\) queued for the workers \(calibrate\)/.test(line)) return;
    // the layer's inputs, replaced by a link to a copy outside the work folder, before any worker reads them
    const outside = path.join(tmp, "outside-embeddings.bin");
    fs.copyFileSync(inputs, outside);
    fs.rmSync(inputs);
    fs.symlinkSync(outside, inputs);
    workers.push(worker());
  });
  const { code } = await c.exit;
  await stopAll(workers);
  const err = c.err.join("\n");
  assert.equal(code, 1, err);
  assert.match(err, /layer 0 token shard 0 \(calibrate\), in worker [^:]+:\d+: .*embeddings\.bin.*link/);
  assert.ok(!fs.existsSync(out), "no output");
});

/** A CA and a server certificate for 127.0.0.1 in `dir` (openssl), or null where openssl is not installed. */
function certificates(dir: string): { ca: string; cert: string; key: string } | null {
  const sh = (args: string[]): boolean => spawnSync("openssl", args, { cwd: dir, stdio: "ignore" }).status === 0;
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  const ok =
    sh([
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=moecal test CA",
    ]) &&
    sh(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]) &&
    sh([
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "server.pem",
      "-days",
      "2",
      "-extfile",
      "san.cnf",
    ]);
  return ok ? { ca: path.join(dir, "ca.pem"), cert: path.join(dir, "server.pem"), key: path.join(dir, "server.key") } : null;
}

test("a server with TLS and a password: coordinator and worker connect with the URL's user and --nats-tls-ca, the run writes the local bytes; without the CA a worker cannot connect (exit 2)", {
  skip,
}, async (t) => {
  const certs = certificates(path.join(tmp, "tls"));
  if (!certs) return t.skip("openssl is not installed");
  const secure = await startNats(
    path.join(tmp, "jetstream-tls"),
    ["--tls", "--tlscert", certs.cert, "--tlskey", certs.key, "--user", "moecal", "--pass", "s3cret"],
    "tls",
  );
  try {
    const url = secure.url.replace("tls://", "tls://moecal:s3cret@");
    const args = ["--model", shared("tiny-qwen3_moe"), ...RUN, "--expert-group-size", "3"];
    const bare = moecal(["worker", "--nats", url, "--shared-dir", path.join(tmp, "shared")]);
    const refused = await bare.exit;
    assert.equal(refused.code, 2, bare.err.join("\n"));
    assert.match(bare.err.join("\n"), /cannot connect/);
    assert.doesNotMatch(bare.err.join("\n"), /s3cret/);
    const reference = local("tiny-qwen3_moe-2", args);
    const tls = ["--nats", url, "--nats-tls-ca", certs.ca];
    const w = moecal(["worker", ...tls, "--shared-dir", path.join(tmp, "shared"), "--json", "--workers", "0"]);
    const out = path.join(tmp, "shared", "over-tls");
    const c = moecal(["oneshot", ...args, "--output", out, ...tls]);
    const { code } = await c.exit;
    const events = await stopAll([w]);
    assert.equal(code, 0, c.err.join("\n"));
    assert.ok(
      events.some((e) => e.kind === "job-done"),
      "the worker did jobs over TLS",
    );
    assertSameFiles(out, reference);
  } finally {
    await secure.stop();
  }
});

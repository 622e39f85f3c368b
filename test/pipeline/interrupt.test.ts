import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { spawn, spawnSync } from "node:child_process";
import { ROOT, tempDir } from "../helpers.js";

const cli = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = tempDir("moecal-interrupt-");
const model = path.join(tmp, "model");
const made = spawnSync(
  process.execPath,
  [
    cli,
    "random-model",
    "--output",
    model,
    "--layers",
    "8",
    "--set",
    "hidden_size=256",
    "--set",
    "num_experts=32",
    "--set",
    "moe_intermediate_size=128",
  ],
  { encoding: "utf8" },
);

/** Start oneshot and send `signal` once layer 3 of 8 has started (shards and temporary files exist then). */
async function interrupted(
  signal: NodeJS.Signals,
  out: string,
  extra: string[] = [],
  at = /layer 3\/8/,
): Promise<{ code: number | null; sig: NodeJS.Signals | null; stderr: string }> {
  const child = spawn(
    process.execPath,
    [
      cli,
      "oneshot",
      "--model",
      model,
      "--method",
      "rtn",
      "--calibrate",
      "--num-samples",
      "4",
      "--max-seq-length",
      "32",
      "--output",
      out,
      ...extra,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  let sent = false;
  return new Promise((resolve) => {
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (!sent && at.test(stderr)) {
        sent = true;
        child.kill(signal);
      }
    });
    child.on("exit", (code, sig) => resolve({ code, sig, stderr }));
  });
}

for (const [signal, code] of [
  ["SIGINT", 130],
  ["SIGTERM", 143],
  ["SIGHUP", 129],
  ["SIGQUIT", 131],
  ["SIGKILL", null],
] as const) {
  test(`${signal} in the middle of oneshot leaves no checkpoint where the output should be, only the finished layers; rerunning resumes`, async () => {
    assert.equal(made.status, 0, made.stderr);
    const out = path.join(tmp, `out-${signal}`);
    const r = await interrupted(signal, out);
    if (code === null) assert.equal(r.sig, "SIGKILL");
    else {
      assert.equal(r.code, code, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `interrupted \\(${signal}\\); no output was written; the finished layers are kept in .*out-${signal}\\.moecal-work: rerun the same command to resume`,
        ),
      );
      assert.deepEqual(
        fs.readdirSync(tmp).filter((f) => f.startsWith(`.out-${signal}`)),
        [`.out-${signal}.moecal-work`],
        "temporary folder and lock removed, finished layers kept",
      );
    }
    assert.equal(fs.existsSync(out), false);
    const again = spawnSync(
      process.execPath,
      [cli, "oneshot", "--model", model, "--method", "rtn", "--calibrate", "--num-samples", "4", "--max-seq-length", "32", "--output", out],
      { encoding: "utf8" },
    );
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /resuming after layer [1-3]\/8/);
    assert.ok(fs.existsSync(path.join(out, "config.json")));
    // a killed run's temporary folder, lock and work folder are cleaned up by the next run
    assert.deepEqual(
      fs.readdirSync(tmp).filter((f) => f.startsWith(`.out-${signal}`)),
      [],
    );
  });
}

const quick = (out: string, extra: string[] = []): string[] => [
  cli,
  "oneshot",
  "--model",
  model,
  "--method",
  "rtn",
  "--calibrate",
  "--num-samples",
  "2",
  "--max-seq-length",
  "16",
  "--output",
  out,
  "--quiet",
  ...extra,
];

test("a second run to an output another run is writing is refused while the first runs; the lock goes with the first", async () => {
  const out = path.join(tmp, "out-locked");
  // long enough that it still runs when the second starts, on a loaded machine too (it is stopped below)
  const first = spawn(
    process.execPath,
    [cli, "oneshot", "--model", model, "--method", "rtn", "--calibrate", "--num-samples", "64", "--max-seq-length", "128", "--output", out],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  await new Promise<void>((resolve) =>
    first.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (/layer 1\/8/.test(stderr)) resolve();
    }),
  );
  const second = spawnSync(process.execPath, quick(out, ["--overwrite"]), { encoding: "utf8" });
  assert.equal(second.status, 2, second.stderr);
  assert.match(second.stderr, new RegExp(`out-locked is being written by another moecal run \\(pid ${first.pid}`));
  const code = await new Promise<number | null>((resolve) => {
    first.on("exit", (c) => resolve(c));
    first.kill("SIGHUP");
  });
  assert.equal(code, 129);
  assert.deepEqual(
    fs.readdirSync(tmp).filter((f) => f.startsWith(".out-locked") && !f.endsWith(".moecal-work")),
    [],
    "lock and temporary folder removed",
  );
  assert.equal(spawnSync(process.execPath, quick(out, ["--restart"]), { encoding: "utf8" }).status, 0);
});

test("--overwrite killed (SIGKILL) at any point leaves the old output or the new one, never neither", async () => {
  const out = path.join(tmp, "out-replace");
  assert.equal(spawnSync(process.execPath, quick(out), { encoding: "utf8" }).status, 0);
  const old = fs.readFileSync(path.join(out, "moecal.json"), "utf8");
  // at the first layer, mid-run, at the last layer, and once the last layer is done (output being finished and renamed)
  for (const at of [/layer 1\/8/, /layer 5\/8/, /layer 8\/8/, / {2}layer 7: /]) {
    await interrupted("SIGKILL", out, ["--overwrite"], at);
    const now = fs.readFileSync(path.join(out, "moecal.json"), "utf8");
    assert.ok(now === old || JSON.parse(now).num_samples === 4, "the old output, or the complete new one");
    assert.ok(fs.existsSync(path.join(out, "model.safetensors.index.json")));
  }
  // the moment between moving the old output aside and renaming the new one in: the next run puts the old one back
  const dead = spawnSync(process.execPath, ["-e", "0"]).pid as number;
  const aside = path.join(tmp, `.out-replace.moecal-old-${dead}`);
  fs.renameSync(out, aside);
  const next = spawnSync(process.execPath, quick(out), { encoding: "utf8" });
  assert.equal(next.status, 2, "the restored output is there, so a run without --overwrite is refused");
  assert.match(next.stderr, /restored the previous output/);
  assert.equal(fs.readFileSync(path.join(out, "moecal.json"), "utf8").length > 0, true);
  assert.equal(fs.existsSync(aside), false);
});

test("SIGINT before the first layer finished: the work folder (embeddings of the calibration set) is removed, and the message names nothing kept", async () => {
  const out = path.join(tmp, "out-early");
  const r = await interrupted("SIGINT", out, [], /layer 1\/8/);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /interrupted \(SIGINT\); no output was written\n/);
  assert.doesNotMatch(r.stderr, /kept/);
  assert.deepEqual(
    fs.readdirSync(tmp).filter((f) => f.startsWith(".out-early")),
    [],
  );
});

test("SIGINT at any moment (onnxruntime calls and GPTQ jobs in flight) stops at a safe point: exit 130, never an abort in native code", async () => {
  const out = path.join(tmp, "out-native");
  // counted from the first line (the plan: the signal handlers are installed by then), and from the
  // last layer's line, when the output is assembled, committed and the process exits (a signal in
  // its last milliseconds once killed it: 9 of 60 sends 150-290 ms after that line)
  const first = /./;
  const last = /layer 8\/8: \d+ Linear quantized/;
  const sends: [RegExp, number][] = [
    [first, 0],
    [first, 400],
    [first, 900],
    [first, 1500],
    [last, 120],
    [last, 180],
    [last, 240],
  ];
  for (const [at, delay] of sends) {
    const child = spawn(
      process.execPath,
      [cli, "oneshot", "--model", model, "--num-samples", "4", "--max-seq-length", "32", "--output", out, "--restart"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    let timer: NodeJS.Timeout | undefined;
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (!timer && at.test(stderr)) timer = setTimeout(() => child.kill("SIGINT"), delay);
    });
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("exit", (c, s) => resolve([c, s])));
    clearTimeout(timer);
    assert.equal(sig, null, `killed by ${sig} ${delay} ms after ${at}: ${stderr}`);
    assert.ok(code === 130 || code === 0, `exit ${code} ${delay} ms after ${at}: ${stderr}`);
    assert.doesNotMatch(stderr, /Napi|Aborted|internal error/);
    // a signal after the output was committed: exit 130, and the message says it is complete
    if (code === 130 && /after the output was put in place; it is complete/.test(stderr))
      assert.ok(fs.existsSync(path.join(out, "config.json")));
    else if (code === 130) assert.equal(fs.existsSync(out), false, stderr);
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test("SIGINT while the output is being finished (--overwrite): either the old output is intact and nothing was written, or the new one is complete and the message says so", async () => {
  const out = path.join(tmp, "out-final");
  assert.equal(spawnSync(process.execPath, quick(out), { encoding: "utf8" }).status, 0);
  // in the last layer's write, and once it is done (the output being assembled, then committed)
  for (const at of [/layer 8\/8: write/, /layer 8\/8: \d+ Linear quantized/]) {
    fs.rmSync(path.join(tmp, ".out-final.moecal-work"), { recursive: true, force: true });
    const old = fs.readFileSync(path.join(out, "moecal.json"), "utf8");
    const r = await interrupted("SIGINT", out, ["--overwrite"], at);
    const now = fs.readFileSync(path.join(out, "moecal.json"), "utf8");
    if (r.code === 0) continue; // finished before the signal arrived
    assert.equal(r.code, 130, r.stderr);
    if (/no output was written/.test(r.stderr))
      assert.equal(now, old, "the message says nothing was written: the old output must be intact");
    else {
      assert.match(r.stderr, /interrupted \(SIGINT\) after the output was put in place; it is complete: .*out-final/);
      assert.equal(JSON.parse(now).num_samples, 4, "the new output");
    }
    assert.deepEqual(
      fs.readdirSync(tmp).filter((f) => f.startsWith(".out-final") && !f.endsWith(".moecal-work")),
      [],
    );
  }
});

test("SIGINT during random-model's write: the message matches what is on disk (complete output, or none and no temporary)", async () => {
  for (const delay of [1500, 4000]) {
    const out = path.join(tmp, `random-${delay}`);
    const set = ["hidden_size=768", "num_experts=32", "moe_intermediate_size=512"].flatMap((s) => ["--set", s]);
    const child = spawn(process.execPath, [cli, "random-model", "--output", out, "--layers", "4", ...set], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill("SIGINT"), delay);
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("exit", (c, s) => resolve([c, s])));
    clearTimeout(timer);
    const leftovers = fs.readdirSync(tmp).filter((f) => f.startsWith(`.random-${delay}`));
    assert.deepEqual(leftovers, [], "no temporary folder or lock");
    if (sig === "SIGINT") assert.equal(fs.existsSync(out), false, "stopped before moecal could handle the signal: nothing made yet");
    else if (code === 130 && /no output was written/.test(stderr)) assert.equal(fs.existsSync(out), false);
    else if (code === 130) {
      assert.match(stderr, /after the output was put in place; it is complete: .*random-/);
      assert.ok(fs.existsSync(path.join(out, "config.json")));
    } else assert.equal(code, 0, stderr);
  }
});

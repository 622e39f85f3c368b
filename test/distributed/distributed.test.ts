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
import os from "node:os";
import path from "node:path";
import { ROOT, TEXT, assertSameFiles } from "../helpers.js";
import { NATS_SKIP, type NatsServer, startNats } from "./nats-server.js";

const CLI = path.join(ROOT, "dist", "src", "cli", "main.js");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moecal-distributed-"));
const server: NatsServer | null = NATS_SKIP ? null : await startNats(path.join(tmp, "jetstream"));
after(() => server?.stop());
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

const worker = (onLine?: (line: string, p: Proc) => void): Proc =>
  moecal(["worker", "--nats", server?.url ?? "", "--shared-dir", path.join(tmp, "shared"), "--json", "--workers", "0"], onLine);

/** Stop workers (SIGTERM) and return their JSON events. */
async function stopAll(workers: Proc[]): Promise<Record<string, unknown>[]> {
  for (const w of workers) w.proc.kill("SIGTERM");
  await Promise.all(workers.map((w) => w.exit));
  return workers.flatMap((w) => w.out.filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>));
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
  ["tiny-qwen3_moe", ["--expert-group-size", "3"], [1, 2, 3]],
  ["tiny-deepseek_v3-fp8", [], [2]],
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
      const queued = c.err.filter((l) => /expert group job\(s\) queued/.test(l));
      assert.ok(queued.length > 0, "the coordinator queued jobs");
      const jobs = queued.reduce((a, l) => a + Number(/: (\d+) expert group/.exec(l)?.[1]), 0);
      assert.equal(events.filter((e) => e.kind === "job-done").length, jobs, "every job was done by a worker");
      assertSameFiles(out, reference);
    });
}

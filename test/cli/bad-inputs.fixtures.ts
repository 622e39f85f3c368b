/** Shared by the bad-input cases: model copies, header edits, datasets, and running a case. */
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { type NamedRaw, writeSafetensors } from "../../src/io/writer.js";
import { f32ToBf16 } from "../../src/engine/dtype.js";
import { ROOT, TINY, tempDir } from "../helpers.js";

export const CLI = path.join(ROOT, "dist", "src", "cli", "main.js");

export interface BadInputCase {
  name: string;
  /** prepares the input inside `dir`; returns the moecal arguments */
  setup(dir: string): string[];
  exitCode: number;
  message: RegExp;
  /** runs only where this returns true (with the reason otherwise) */
  available?: () => string | null;
  /** the working folder of the run (default: `dir`) */
  cwd?: (dir: string) => string;
  /** the case's own `dir/out` exists before the run and must survive it */
  keepsOutput?: boolean;
  /** after the run: throws if an input was harmed */
  verify?: (dir: string) => void;
}

export const SHARD1 = "model-00001-of-00002.safetensors";

/** A copy of the bundled model in `dir/model`, optionally with its config or shard 1 changed. */
export function modelCopy(
  dir: string,
  opts: {
    config?: (c: Record<string, unknown>) => void;
    shard1?: (b: Buffer) => Buffer;
    tensors?: (t: Map<string, NamedRaw>) => void;
  } = {},
): string {
  const m = path.join(dir, "model");
  fs.mkdirSync(m, { recursive: true });
  for (const f of fs.readdirSync(TINY)) fs.copyFileSync(path.join(TINY, f), path.join(m, f));
  if (opts.config) {
    const c = JSON.parse(fs.readFileSync(path.join(m, "config.json"), "utf8")) as Record<string, unknown>;
    opts.config(c);
    fs.writeFileSync(path.join(m, "config.json"), JSON.stringify(c));
  }
  if (opts.shard1) fs.writeFileSync(path.join(m, SHARD1), opts.shard1(fs.readFileSync(path.join(m, SHARD1))));
  if (opts.tensors) {
    const ck = Checkpoint.open(TINY);
    const t = new Map(ck.names().map((n) => [n, { name: n, ...ck.readRaw(n) }]));
    opts.tensors(t);
    for (const f of fs.readdirSync(m)) if (f.endsWith(".safetensors") || f.endsWith(".index.json")) fs.rmSync(path.join(m, f));
    // written without the writer's finiteness check: some cases are broken on purpose
    writeSafetensors(path.join(m, "model.safetensors"), [...t.values()]);
  }
  return m;
}

/** Rewrite the JSON header of a safetensors buffer. */
export function withHeader(b: Buffer, edit: (h: Record<string, Record<string, unknown>>) => void): Buffer {
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as Record<string, Record<string, unknown>>;
  edit(h);
  const json = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, b.subarray(8 + n)]);
}

export function dataset(dir: string, content: string, name = "data.jsonl"): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content);
  return f;
}

export const quick = (model: string, dir: string, extra: string[] = []): string[] => [
  "oneshot",
  "--model",
  model,
  "--method",
  "rtn",
  "--calibrate",
  "--num-samples",
  "1",
  "--max-seq-length",
  "8",
  "--output",
  path.join(dir, "out"),
  ...extra,
];

/** Every file below `dir` with its bytes, to compare before and after a run. */
export function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const f of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, f.name);
      if (f.isDirectory()) walk(p);
      else if (f.isFile()) out.set(path.relative(dir, p), fs.readFileSync(p).toString("base64"));
    }
  };
  walk(dir);
  return out;
}

/** A case whose input folder `dir/model` (and `dir/data.jsonl`) must come out byte for byte as it went in. */
export function untouched(setup: (dir: string) => string[]): Pick<BadInputCase, "setup" | "verify"> {
  const before = new Map<string, Map<string, string>>();
  return {
    setup: (d) => {
      const args = setup(d);
      before.set(d, snapshot(d));
      return args;
    },
    verify: (d) => {
      const after = snapshot(d);
      for (const [f, bytes] of before.get(d) ?? []) if (after.get(f) !== bytes) throw new Error(`input ${f} was changed or removed`);
    },
  };
}

export const ALIVE_PID = (): number => process.pid;

/** A compressed-tensors copy of the bundled model in `dir/q` (W4A16_ASYM, RTN), its shard then changed by `edit`. */
export function quantized(dir: string, edit?: (b: Buffer) => Buffer, config?: (c: Record<string, unknown>) => void): string {
  const q = path.join(dir, "q");
  const r = spawnSync(
    process.execPath,
    [CLI, "oneshot", "--scheme", "W4A16_ASYM", "--method", "rtn", "--num-samples", "1", "--max-seq-length", "8", "--output", q, "--quiet"],
    { encoding: "utf8", cwd: dir },
  );
  if (r.status !== 0) throw new Error(`oneshot failed: ${r.stderr}`);
  const shard = fs.readdirSync(q).find((f) => f.endsWith(".safetensors")) as string;
  if (edit) fs.writeFileSync(path.join(q, shard), edit(fs.readFileSync(path.join(q, shard))));
  if (config) {
    const c = JSON.parse(fs.readFileSync(path.join(q, "config.json"), "utf8")) as Record<string, unknown>;
    config(c);
    fs.writeFileSync(path.join(q, "config.json"), JSON.stringify(c));
  }
  return q;
}

/** A tokenizer_config.json with this chat template, and a one-sample "messages" dataset. */
export function chatCase(template: string): (d: string) => string[] {
  return (d) => {
    const m = modelCopy(d);
    const tc = JSON.parse(fs.readFileSync(path.join(m, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    tc.chat_template = template;
    fs.writeFileSync(path.join(m, "tokenizer_config.json"), JSON.stringify(tc));
    return quick(m, d, ["--dataset", dataset(d, '{"messages": [{"role": "user", "content": "hello"}]}\n')]);
  };
}

export const EXPERT = "model.layers.1.mlp.experts.3.gate_proj";

/** Whether this machine lets us mount a small tmpfs (root, and a sandbox that allows it). */
export function canMountTmpfs(): string | null {
  if (process.getuid?.() !== 0) return "needs root to mount a small tmpfs";
  const probe = tempDir("moecal-mount-");
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", probe]);
  if (r.status === 0) spawnSync("umount", [probe]);
  fs.rmSync(probe, { recursive: true, force: true });
  return r.status === 0 ? null : "mounting a tmpfs is not allowed here";
}

/** Unmount anything a case mounted under `dir`. */
export function cleanupCase(dir: string): void {
  const mnt = path.join(dir, "small");
  if (fs.existsSync(mnt)) spawnSync("umount", [mnt]);
}

export function runCase(c: BadInputCase, dir: string): { status: number | null; stderr: string; stdout: string } {
  const args = c.setup(dir);
  // a bound on every run: a read that blocked (a FIFO) fails the case instead of hanging the suite
  return spawnSync(process.execPath, [CLI, ...args], {
    encoding: "utf8",
    cwd: c.cwd?.(dir) ?? dir,
    timeout: 60_000,
    killSignal: "SIGKILL",
  });
}

/** A `tensors` edit for modelCopy: the BF16 tensor `name` filled with `fill`, with `value` at flat index `at`. */
export function poisoned(name: string, fill: number, at: number, value: number): (t: Map<string, NamedRaw>) => void {
  return (t) => {
    const x = t.get(name) as NamedRaw;
    const v = new Float32Array(x.bytes.byteLength / 2).fill(fill);
    v[at] = value;
    t.set(x.name, { ...x, bytes: new Uint8Array(f32ToBf16(v).buffer) });
  };
}

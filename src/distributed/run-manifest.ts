/**
 * A distributed run's manifest, put in the NATS key-value bucket by the coordinator and read by
 * every worker before its first job of the run: the protocol and moecal version (a worker of
 * another refuses the run), where the model and the work folder lie (paths every host sees, inside
 * the worker's --shared-dir), the model's content hash (a worker that sees another model refuses),
 * and the options that decide the quantized bytes. The run's id is the manifest's hash.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import { UsageError } from "../errors.js";
import { MOECAL_VERSION } from "../paths.js";
import { ONESHOT_OPTIONS } from "../pipeline/options.js";
import type { OneshotOptions } from "../pipeline/oneshot.js";

/** Bumped when a job's or the manifest's meaning changes. */
const PROTOCOL = 2;

/** The options of a run that decide what a group job writes (the rest stay with the coordinator). */
const JOB_OPTIONS = ONESHOT_OPTIONS.pick({
  scheme: true,
  method: true,
  groupSize: true,
  calibrateAllExperts: true,
  fastPath: true,
  expertStatistics: true,
  routedWeight: true,
  ignore: true,
  vllmCheck: true,
  actorder: true,
  dampening: true,
  shardTokens: true,
});

const MANIFEST = z.strictObject({
  protocol: z.number().int(),
  moecal_version: z.string(),
  model_dir: z.string(),
  model_sha256: z.string(),
  work_dir: z.string(),
  options: JOB_OPTIONS,
  /** a recipe file's name and text (workers need not see the file) */
  recipe: z.strictObject({ file: z.string(), text: z.string() }).optional(),
});

export type RunManifest = z.infer<typeof MANIFEST>;

/** The manifest of a run of `opts` (its recipe's text, when a file gave it) writing its work folder `workDir`. */
export function runManifest(
  opts: OneshotOptions,
  m: { modelDir: string; modelSha: string; workDir: string; recipeText?: string },
): RunManifest {
  const options = Object.fromEntries(
    Object.keys(JOB_OPTIONS.shape).flatMap((k) =>
      opts[k as keyof OneshotOptions] === undefined ? [] : [[k, opts[k as keyof OneshotOptions]]],
    ),
  );
  return {
    protocol: PROTOCOL,
    moecal_version: MOECAL_VERSION,
    model_dir: path.resolve(m.modelDir),
    model_sha256: m.modelSha,
    work_dir: path.resolve(m.workDir),
    options: JOB_OPTIONS.parse(options),
    ...(opts.recipe !== undefined && m.recipeText !== undefined
      ? { recipe: { file: path.basename(opts.recipe), text: m.recipeText } }
      : {}),
  };
}

/** The run's id: the first 16 hex digits of the manifest's SHA-256 (a NATS subject and key token). */
export function runId(m: RunManifest): string {
  return createHash("sha256").update(JSON.stringify(m)).digest("hex").slice(0, 16);
}

/**
 * The manifest a worker read for run `id`, checked: made by this protocol and moecal version, of the
 * shape this version writes, naming paths inside `sharedDir` (resolved, links included).
 */
export function checkManifest(text: string, id: string, sharedDir: string): RunManifest {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new UsageError(`run ${id}: its manifest in the NATS bucket is not JSON`);
  }
  const o = (typeof v === "object" && v !== null ? v : {}) as Record<string, unknown>;
  if (o.protocol !== PROTOCOL || o.moecal_version !== MOECAL_VERSION)
    throw new UsageError(
      `run ${id} was started by moecal ${String(o.moecal_version)} (protocol ${String(o.protocol)}); this worker is moecal ${MOECAL_VERSION} (protocol ${PROTOCOL}): run workers of the coordinator's version`,
    );
  const r = MANIFEST.safeParse(v);
  if (!r.success)
    throw new UsageError(
      `run ${id}: its manifest's field "${r.error.issues[0]?.path.join(".")}" is not what moecal ${MOECAL_VERSION} writes`,
    );
  const root = sharedRoot(sharedDir);
  for (const [what, p] of [
    ["model", r.data.model_dir],
    ["work folder", r.data.work_dir],
  ] as const) {
    const real = realOrNull(p);
    if (real === null) throw new UsageError(`run ${id}: its ${what} ${p} is not there on this host (is the shared folder mounted?)`);
    if (real !== root && !real.startsWith(`${root}${path.sep}`))
      throw new UsageError(`run ${id}: its ${what} ${p} is outside --shared-dir ${sharedDir}; this worker reads and writes only there`);
  }
  return r.data;
}

/** The shared folder, resolved (links included); a usage error when it is not a folder. */
export function sharedRoot(sharedDir: string): string {
  const root = realOrNull(sharedDir);
  if (root === null || !fs.statSync(root).isDirectory()) throw new UsageError(`--shared-dir ${sharedDir}: no such folder`);
  return root;
}

function realOrNull(p: string): string | null {
  try {
    return fs.realpathSync(p);
  } catch {
    return null;
  }
}

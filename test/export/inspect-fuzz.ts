/**
 * Fuzzing `inspect` on mutated compressed-tensors checkpoints: a clean W4A16_ASYM export of the
 * bundled model with one file changed (shard header fields, shard bytes, quantization_config
 * fields, the index). `inspect` must return a report, or fail with the project's own non-internal
 * error; never throw anything else, and never call a changed checkpoint clean unless the change
 * left it valid. Shared by the bounded test (npm test) and `npm run fuzz`.
 */
import fs from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { InternalError, MoecalError } from "../../src/errors.js";
import { inspectCheckpoint } from "../../src/export/inspect.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { tempDir } from "../helpers.js";

type Mutation =
  | { kind: "header"; tensor: number; field: "dtype" | "shape" | "data_offsets"; value: unknown }
  | { kind: "bytes"; flips: { at: number; value: number }[] }
  | { kind: "config"; group: boolean; field: string; value: unknown }
  | { kind: "index"; tensor: number; action: "drop" | "retarget" | "bogus" }
  | { kind: "rename"; tensor: number; name: string };

const json = fc.oneof(
  fc.constantFrom(
    null,
    true,
    false,
    "",
    "int",
    "float",
    "group",
    "channel",
    "tensor",
    "token",
    "static",
    "pack-quantized",
    "float-quantized",
    "int-quantized",
    "re:(",
    "re:.*",
    "Linear",
  ),
  fc.integer({ min: -3, max: 300 }),
  fc.double(),
  fc.array(fc.oneof(fc.integer({ min: -2, max: 200 }), fc.constantFrom("Linear", "re:.*", "re:[")), { maxLength: 3 }),
);

export const inspectMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    kind: fc.constant("header" as const),
    tensor: fc.nat(),
    field: fc.constantFrom("dtype" as const, "shape" as const, "data_offsets" as const),
    value: fc.oneof(json, fc.tuple(fc.nat({ max: 4000 }), fc.nat({ max: 4000 }))),
  }),
  fc.record({
    kind: fc.constant("bytes" as const),
    flips: fc.array(fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 16 }),
  }),
  fc.record({
    kind: fc.constant("config" as const),
    group: fc.boolean(),
    field: fc.constantFrom(
      "num_bits",
      "type",
      "symmetric",
      "strategy",
      "group_size",
      "dynamic",
      "actorder",
      "targets",
      "format",
      "ignore",
      "quant_method",
      "config_groups",
    ),
    value: json,
  }),
  fc.record({
    kind: fc.constant("index" as const),
    tensor: fc.nat(),
    action: fc.constantFrom("drop" as const, "retarget" as const, "bogus" as const),
  }),
  fc.record({
    kind: fc.constant("rename" as const),
    tensor: fc.nat(),
    name: fc.constantFrom(
      "__proto__",
      "constructor",
      "a..b",
      "model.layers.9.mlp.gate_proj.weight",
      "model.layers.1.mlp.experts.99.up_proj.weight_scale",
      "x y",
    ),
  }),
);

interface Base {
  dir: string;
  files: Map<string, Buffer>;
  shard: string;
}

/** The clean checkpoint, written once per process. */
let base: Promise<Base> | null = null;
function clean(): Promise<Base> {
  base ??= (async () => {
    const root = tempDir("moecal-inspect-fuzz-");
    const src = path.join(root, "clean");
    await oneshot({
      scheme: "W4A16_ASYM",
      method: "rtn",
      groupSize: 32,
      numSamples: 1,
      maxSeqLength: 8,
      output: src,
      warn: () => undefined,
    });
    const files = new Map(fs.readdirSync(src).map((f) => [f, fs.readFileSync(path.join(src, f))]));
    const dir = path.join(root, "work");
    fs.mkdirSync(dir);
    for (const [f, b] of files) fs.writeFileSync(path.join(dir, f), b);
    return { dir, files, shard: [...files.keys()].find((f) => f.endsWith(".safetensors")) as string };
  })();
  return base;
}

function editHeader(buf: Buffer, edit: (h: Record<string, unknown>, names: string[]) => void): Buffer {
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  edit(
    h,
    Object.keys(h).filter((k) => k !== "__metadata__"),
  );
  const text = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([len, text, buf.subarray(8 + n)]);
}

/** The file the mutation changes and its new bytes. */
function mutate(b: Base, m: Mutation): [string, Buffer] {
  const shard = b.files.get(b.shard) as Buffer;
  switch (m.kind) {
    case "header":
      return [
        b.shard,
        editHeader(shard, (h, names) => {
          (h[names[m.tensor % names.length] as string] as Record<string, unknown>)[m.field] = m.value;
        }),
      ];
    case "rename":
      return [
        b.shard,
        editHeader(shard, (h, names) => {
          const old = names[m.tensor % names.length] as string;
          Object.defineProperty(h, m.name, { value: h[old], enumerable: true, configurable: true, writable: true });
          delete h[old];
        }),
      ];
    case "bytes": {
      const out = Buffer.from(shard);
      const headerEnd = 8 + Number(shard.readBigUInt64LE(0));
      // half the flips land in the header, half in the data
      m.flips.forEach((f, i) => {
        out[i % 2 ? headerEnd + (f.at % (out.length - headerEnd)) : f.at % headerEnd] = f.value;
      });
      return [b.shard, out];
    }
    case "config": {
      const c = JSON.parse((b.files.get("config.json") as Buffer).toString("utf8")) as {
        quantization_config: Record<string, unknown> & { config_groups: Record<string, Record<string, Record<string, unknown>>> };
      };
      const qc = c.quantization_config;
      const g = qc.config_groups.group_0 as Record<string, Record<string, unknown>>;
      if (m.group && ["targets", "format"].includes(m.field)) (g as Record<string, unknown>)[m.field] = m.value;
      else if (m.group) (g.weights as Record<string, unknown>)[m.field] = m.value;
      else qc[m.field] = m.value;
      return ["config.json", Buffer.from(JSON.stringify(c))];
    }
    case "index": {
      const j = JSON.parse((b.files.get("model.safetensors.index.json") as Buffer).toString("utf8")) as {
        weight_map: Record<string, string>;
      };
      const names = Object.keys(j.weight_map);
      const name = names[m.tensor % names.length] as string;
      if (m.action === "drop") delete j.weight_map[name];
      else if (m.action === "retarget") j.weight_map[name] = "model-00009-of-00009.safetensors";
      else j.weight_map[`${name}.bogus`] = b.shard;
      return ["model.safetensors.index.json", Buffer.from(JSON.stringify(j))];
    }
  }
}

/** One mutated checkpoint through inspect: a report with or without problems, or a refusal; throws on anything else. */
export async function inspectOne(m: Mutation): Promise<"clean" | "problems" | "refused"> {
  const b = await clean();
  const [file, bytes] = mutate(b, m);
  fs.writeFileSync(path.join(b.dir, file), bytes);
  try {
    return inspectCheckpoint(b.dir).problems.length ? "problems" : "clean";
  } catch (e) {
    if (e instanceof MoecalError && !(e instanceof InternalError)) return "refused";
    throw new Error(`inspect threw ${(e as Error)?.stack ?? String(e)} on ${JSON.stringify(m)}`);
  } finally {
    fs.writeFileSync(path.join(b.dir, file), b.files.get(file) as Buffer);
  }
}

export async function fuzzInspect(numRuns: number, seed?: number): Promise<{ clean: number; problems: number; refused: number }> {
  const counts = { clean: 0, problems: 0, refused: 0 };
  await fc.assert(
    fc.asyncProperty(inspectMutation, async (m) => {
      counts[await inspectOne(m)]++;
    }),
    { numRuns, seed },
  );
  return counts;
}

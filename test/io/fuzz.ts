/**
 * Property-based fuzzing of the safetensors reader: valid files mutated (bytes flipped,
 * truncated, header fields changed). The reader must either return exactly the bytes its
 * header declares for every tensor, or throw the project's own error; never crash otherwise.
 * Shared by the bounded test (npm test) and the long run (npm run fuzz).
 */
import fs from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { SafetensorsFile, DTYPE_BYTES } from "../../src/io/safetensors.js";
import { encodeSafetensors } from "../../src/io/writer.js";
import { MoecalError } from "../../src/errors.js";
import { numel } from "../../src/engine/tensor.js";
import { tempDir } from "../helpers.js";

const dir = tempDir("moecal-fuzz-");
let counter = 0;

function base(): Buffer {
  const t = (
    name: string,
    dtype: "F32" | "BF16" | "I64" | "U8",
    shape: number[],
  ): { name: string; dtype: "F32" | "BF16" | "I64" | "U8"; shape: number[]; bytes: Uint8Array } => {
    const n = numel(shape) * DTYPE_BYTES[dtype];
    return { name, dtype, shape, bytes: Uint8Array.from({ length: n }, (_, i) => (i * 37 + name.length) & 0xff) };
  };
  return Buffer.concat(
    encodeSafetensors(
      [t("a.weight", "F32", [3, 5]), t("b", "BF16", [7]), t("ids", "I64", [2, 2]), t("empty", "U8", [0]), t("c", "U8", [9])],
      { format: "pt" },
    ),
  );
}

type Mutation =
  | { kind: "flip"; at: number; value: number }[]
  | { kind: "flip-data"; at: number; value: number }
  | { kind: "truncate"; keep: number }
  | { kind: "header"; tensor: number; field: "dtype" | "shape" | "offsets"; value: unknown };

const flips = fc.array(fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), {
  minLength: 1,
  maxLength: 8,
});
const flipData = fc.record({ kind: fc.constant("flip-data" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) });
const truncate = fc.record({ kind: fc.constant("truncate" as const), keep: fc.nat() });
const header = fc.record({
  kind: fc.constant("header" as const),
  tensor: fc.nat({ max: 4 }),
  field: fc.constantFrom("dtype" as const, "shape" as const, "offsets" as const),
  value: fc.oneof(
    fc.constantFrom("F32", "BF16", "F16", "I8", "F8_E4M3", "Q4", "", null),
    fc.array(fc.oneof(fc.integer({ min: -5, max: 400 }), fc.constant(2 ** 53), fc.double()), { maxLength: 4 }),
    fc.tuple(fc.integer({ min: -10, max: 600 }), fc.integer({ min: -10, max: 600 })),
  ),
});

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(flips, flipData, truncate, header);

function apply(buf: Buffer, m: Mutation): Buffer {
  if (Array.isArray(m)) {
    const out = Buffer.from(buf);
    for (const f of m) out[f.at % out.length] = f.value;
    return out;
  }
  if (m.kind === "flip-data") {
    const out = Buffer.from(buf);
    const start = 8 + Number(buf.readBigUInt64LE(0));
    out[start + (m.at % (out.length - start))] = m.value;
    return out;
  }
  if (m.kind === "truncate") return buf.subarray(0, m.keep % (buf.length + 1));
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, Record<string, unknown>>;
  const names = Object.keys(h).filter((k) => k !== "__metadata__");
  const entry = h[names[m.tensor % names.length] as string] as Record<string, unknown>;
  if (m.field === "dtype") entry.dtype = m.value;
  else if (m.field === "shape") entry.shape = m.value;
  else entry.data_offsets = m.value;
  const json = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, buf.subarray(8 + n)]);
}

/** The property for one mutated file; returns "ok" or "rejected", throws on a violation. */
export function checkOne(m: Mutation): "ok" | "rejected" {
  const data = apply(base(), m);
  const file = path.join(dir, `f${counter++ % 4}.safetensors`);
  fs.writeFileSync(file, data);
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(file);
  } catch (e) {
    if (e instanceof MoecalError && e.message.includes(file)) return "rejected";
    throw e;
  }
  const headerLen = Number(data.readBigUInt64LE(0));
  for (const [name, info] of f.tensors) {
    const raw = f.readRaw(name);
    const expected = data.subarray(8 + headerLen + info.begin, 8 + headerLen + info.end);
    if (raw.bytes.length !== numel(info.shape) * DTYPE_BYTES[info.dtype]) throw new Error(`${name}: byte length does not match its shape`);
    if (!Buffer.from(raw.bytes).equals(expected)) throw new Error(`${name}: bytes differ from the declared range`);
  }
  return "ok";
}

export function fuzz(numRuns: number, seed?: number): { ok: number; rejected: number } {
  const counts = { ok: 0, rejected: 0 };
  fc.assert(
    fc.property(mutationArb, (m) => {
      counts[checkOne(m)]++;
    }),
    { numRuns, seed },
  );
  return counts;
}

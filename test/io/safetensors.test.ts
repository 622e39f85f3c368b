import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { SafetensorsFile } from "../../src/io/safetensors.js";
import { Checkpoint } from "../../src/io/checkpoint.js";
import { ShardedWriter, encodeSafetensors, writeSafetensors } from "../../src/io/writer.js";
import { CheckpointFormatError } from "../../src/errors.js";
import { TINY, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-st-");

/** A file from a raw header object and data bytes. */
function fileWith(name: string, header: unknown, data: Uint8Array, headerText?: string): string {
  const json = Buffer.from(headerText ?? JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const file = path.join(tmp, name);
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}

function rejects(file: string, pattern: RegExp): void {
  assert.throws(
    () => SafetensorsFile.open(file),
    (e: unknown) => e instanceof CheckpointFormatError && pattern.test(e.message) && e.message.includes(file),
  );
}

const good = { a: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] }, b: { dtype: "BF16", shape: [2], data_offsets: [16, 20] } };

test("writer and reader round trip F32, BF16, I64 with metadata", () => {
  const file = path.join(tmp, "rt.safetensors");
  const a = new Float32Array([1, -2.5, 3, 1e-3]);
  const ids = new BigInt64Array([5n, -7n]);
  writeSafetensors(
    file,
    [
      { name: "a", dtype: "F32", shape: [2, 2], bytes: new Uint8Array(a.buffer) },
      { name: "b", dtype: "BF16", shape: [1], bytes: new Uint8Array(new Uint16Array([0x3f80]).buffer) },
      { name: "ids", dtype: "I64", shape: [2], bytes: new Uint8Array(ids.buffer) },
    ],
    { format: "pt" },
  );
  const f = SafetensorsFile.open(file);
  assert.deepEqual([...f.readF32("a").data], [...a]);
  assert.deepEqual([...f.readF32("b").data], [1]);
  assert.deepEqual(f.metadata, { format: "pt" });
  assert.equal(f.info("ids").dtype, "I64");
  // header is padded to 8 bytes
  const hl = Number(fs.readFileSync(file).readBigUInt64LE(0));
  assert.equal((8 + hl) % 8, 0);
});

test("rejects a header length beyond the file", () => {
  const file = path.join(tmp, "long.safetensors");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(1000n);
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from("{}")]));
  rejects(file, /header length 1000 is beyond the end/);
});

test("rejects a file shorter than the length prefix", () => {
  const file = path.join(tmp, "tiny.safetensors");
  fs.writeFileSync(file, Buffer.from([1, 2, 3]));
  rejects(file, /too short/);
});

test("rejects a header that is not JSON", () => {
  rejects(fileWith("nojson.safetensors", null, new Uint8Array(0), "{not json"), /not valid JSON/);
});

test("rejects an unknown dtype, naming the tensor", () => {
  rejects(
    fileWith("dtype.safetensors", { w: { dtype: "F7", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
    /tensor "w": unknown dtype "F7"/,
  );
});

test("rejects offsets outside the data", () => {
  rejects(
    fileWith("oob.safetensors", { w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, new Uint8Array(8)),
    /tensor "w": data_offsets \[0, 16\] outside/,
  );
});

test("rejects overlapping tensors", () => {
  const h = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "F32", shape: [2], data_offsets: [4, 12] } };
  rejects(fileWith("overlap.safetensors", h, new Uint8Array(12)), /"b" overlaps tensor "a"/);
});

test("rejects a byte length that does not equal shape x dtype size", () => {
  const h = { w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } };
  rejects(fileWith("len.safetensors", h, new Uint8Array(8)), /tensor "w": 8 bytes but shape \[3\] of F32 needs 12/);
});

test("rejects a negative or fractional shape", () => {
  rejects(fileWith("shape.safetensors", { w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)), /invalid shape/);
});

test("a good hand-made file reads", () => {
  const f = SafetensorsFile.open(fileWith("good.safetensors", good, new Uint8Array(20)));
  assert.deepEqual(f.readF32("a").shape, [2, 2]);
});

test("truncated file: data section shorter than the header says", () => {
  const buf = Buffer.concat(encodeSafetensors([{ name: "w", dtype: "F32", shape: [4], bytes: new Uint8Array(16) }]));
  const file = path.join(tmp, "trunc.safetensors");
  fs.writeFileSync(file, buf.subarray(0, buf.length - 4));
  rejects(file, /tensor "w": data_offsets \[0, 16\] outside the data section of 12 bytes/);
});

test("sharded checkpoint: the bundled model opens through its index, lazily", () => {
  const ck = Checkpoint.open(TINY);
  assert.ok(ck.names().length > 100);
  assert.equal(ck.fileOf("model.embed_tokens.weight"), "model-00001-of-00002.safetensors");
  assert.equal(ck.info("model.layers.1.mlp.expert_bias").dtype, "F32");
  assert.deepEqual(ck.readF32("model.layers.1.mlp.expert_bias").shape, [16]);
});

test("sharded writer splits into shards with an index that reads back", () => {
  const dir = fs.mkdtempSync(path.join(tmp, "shards-"));
  const w = new ShardedWriter(dir, 40);
  for (let i = 0; i < 5; i++)
    w.add({ name: `t${i}`, dtype: "F32", shape: [4], bytes: new Uint8Array(new Float32Array([i, i, i, i]).buffer) });
  const files = w.finish();
  assert.equal(files.length, 3);
  assert.equal(files[0], "model-00001-of-00003.safetensors");
  const ck = Checkpoint.open(dir);
  for (let i = 0; i < 5; i++) assert.deepEqual([...ck.readF32(`t${i}`).data], [i, i, i, i]);
  assert.deepEqual(
    fs.readdirSync(dir).filter((f) => f.endsWith(".tmp")),
    [],
  );
});

test("index naming a missing shard is an error naming the shard", () => {
  const dir = fs.mkdtempSync(path.join(tmp, "idx-"));
  fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: { w: "model-00009.safetensors" } }));
  assert.throws(() => Checkpoint.open(dir), /shard "model-00009.safetensors" \(holding "w"\) does not exist/);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { checkpointHash, hashWorkers } from "../../src/io/hash.js";
import { CheckpointFormatError } from "../../src/errors.js";
import { tempDir } from "../helpers.js";

const sha = (b: string | Buffer): string => createHash("sha256").update(b).digest("hex");

test("checkpointHash: SHA-256 over `name<TAB>file SHA-256` lines in name order, the same with the files hashed on worker threads; a bad file is a format error either way", async () => {
  const dir = tempDir("moecal-hash-");
  try {
    const files: Record<string, Buffer> = {
      "config.json": Buffer.from('{"model_type":"x"}'),
      "model.safetensors.index.json": Buffer.from("{}"),
      "model-00001-of-00002.safetensors": Buffer.alloc(70_000, 7),
      "model-00002-of-00002.safetensors": Buffer.alloc(50_001, 9),
    };
    for (const [f, b] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), b);
    const names = Object.keys(files).sort();
    const want = sha(names.map((f) => `${f}\t${sha(files[f] as Buffer)}\n`).join(""));
    const weights = ["model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"];
    assert.equal(await checkpointHash(dir, weights), want);
    // workers from 0 bytes: every file on a worker thread
    assert.ok(hashWorkers(4, 120_000, 0) >= 1);
    assert.equal(await checkpointHash(dir, weights, 0), want);
    fs.rmSync(path.join(dir, "model-00002-of-00002.safetensors"));
    fs.mkdirSync(path.join(dir, "model-00002-of-00002.safetensors"));
    for (const from of [Number.POSITIVE_INFINITY, 0])
      await assert.rejects(checkpointHash(dir, weights, from), (e: unknown) => {
        assert.ok(e instanceof CheckpointFormatError, String(e));
        assert.match((e as Error).message, /model-00002-of-00002\.safetensors: is a folder, expected a regular file/);
        return true;
      });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("hashWorkers: none below the size, else one per core and at most one per file", async () => {
  const os = await import("node:os");
  assert.equal(hashWorkers(40, 2 ** 20), 0);
  assert.equal(hashWorkers(1, 2 ** 40), 1);
  assert.equal(hashWorkers(1000, 2 ** 40), os.availableParallelism());
  assert.equal(hashWorkers(3, 10, 10), Math.min(3, os.availableParallelism()));
});

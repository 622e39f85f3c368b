import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { modelFiles } from "../../src/io/model-files.js";
import { oneshot } from "../../src/pipeline/oneshot.js";
import { CheckpointFormatError } from "../../src/errors.js";
import { TINY, tempDir } from "../helpers.js";

const tmp = tempDir("moecal-model-files-");

/** The bundled model with remote code named by auto_map, as published trust_remote_code checkpoints ship. */
function withRemoteCode(name: string): { dir: string; config: Record<string, unknown> } {
  const dir = path.join(tmp, name);
  fs.cpSync(TINY, dir, { recursive: true });
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  config.auto_map = {
    AutoConfig: "configuration_afmoe.AfmoeConfig",
    AutoModelForCausalLM: "modeling_afmoe.AfmoeForCausalLM",
    AutoModel: "other-org/other-repo--modeling_other.OtherModel",
  };
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  fs.writeFileSync(path.join(dir, "configuration_afmoe.py"), "class AfmoeConfig: pass\n");
  fs.writeFileSync(
    path.join(dir, "modeling_afmoe.py"),
    "import torch\nfrom .configuration_afmoe import AfmoeConfig\nfrom .afmoe_utils import rope\n",
  );
  fs.writeFileSync(path.join(dir, "afmoe_utils.py"), "def rope(): pass\n");
  fs.writeFileSync(path.join(dir, "unrelated_script.py"), "print('not remote code')\n");
  return { dir, config };
}

test("modelFiles: tokenizer and generation files present, auto_map modules and their relative imports; other repos' code and stray scripts left out", () => {
  const { dir, config } = withRemoteCode("files");
  const r = modelFiles(dir, config);
  assert.deepEqual(r.files, [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "configuration_afmoe.py",
    "modeling_afmoe.py",
    "afmoe_utils.py",
  ]);
  assert.deepEqual(r.missing, []);
  fs.rmSync(path.join(dir, "afmoe_utils.py"));
  assert.deepEqual(modelFiles(dir, config).missing, ["afmoe_utils.py"]);
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), "{not json");
  assert.throws(
    () => modelFiles(dir, config),
    (e: Error) => e instanceof CheckpointFormatError && e.message.includes("tokenizer_config.json: invalid JSON"),
  );
});

test("oneshot carries the remote code into the output, so trust_remote_code loads still work; a missing module is warned about", async () => {
  const { dir } = withRemoteCode("model");
  const out = path.join(tmp, "out");
  await oneshot({ model: dir, method: "rtn", numSamples: 1, maxSeqLength: 8, output: out, warn: () => undefined });
  for (const f of ["configuration_afmoe.py", "modeling_afmoe.py", "afmoe_utils.py", "tokenizer.json", "generation_config.json"]) {
    assert.equal(fs.readFileSync(path.join(out, f), "utf8"), fs.readFileSync(path.join(dir, f), "utf8"), f);
  }
  assert.equal(fs.existsSync(path.join(out, "unrelated_script.py")), false);
  const saved = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as { auto_map: Record<string, string> };
  assert.equal(saved.auto_map.AutoConfig, "configuration_afmoe.AfmoeConfig");

  fs.rmSync(path.join(dir, "afmoe_utils.py"));
  const warnings: string[] = [];
  await oneshot({ model: dir, method: "rtn", numSamples: 1, maxSeqLength: 8, output: out, overwrite: true, warn: (m) => warnings.push(m) });
  assert.ok(
    warnings.some((w) => w.includes("auto_map names remote code that is not in the folder (afmoe_utils.py)")),
    warnings.join("\n"),
  );
});

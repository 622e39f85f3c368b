import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { parseAfmoeConfig } from "../../../src/models/afmoe/config.js";
import { ConfigError } from "../../../src/errors.js";
import { TINY } from "../../helpers.js";

const base = JSON.parse(fs.readFileSync(path.join(TINY, "config.json"), "utf8")) as Record<string, unknown>;

function bad(patch: Record<string, unknown>, message: RegExp, drop?: string): void {
  const json: Record<string, unknown> = { ...base, ...patch };
  if (drop) delete json[drop];
  assert.throws(
    () => parseAfmoeConfig(json, "cfg.json"),
    (e: unknown) => e instanceof ConfigError && message.test(e.message),
  );
}

test("the bundled config parses with the documented values", () => {
  const c = parseAfmoeConfig(base);
  assert.equal(c.hiddenSize, 128);
  assert.equal(c.numKeyValueHeads, 2);
  assert.deepEqual(c.layerTypes, ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]);
  assert.equal(c.routeScale, 2.826);
  assert.equal(c.mupEnabled, true);
});

test("defaults: score_func sigmoid, route_norm true, layer_types from global_attn_every_n_layers, kv heads = heads", () => {
  const json = { ...base, num_key_value_heads: null };
  for (const k of ["score_func", "route_norm", "layer_types"]) delete (json as Record<string, unknown>)[k];
  const c = parseAfmoeConfig(json);
  assert.equal(c.scoreFunc, "sigmoid");
  assert.equal(c.routeNorm, true);
  assert.equal(c.numKeyValueHeads, 4);
  assert.deepEqual(c.layerTypes, ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]);
});

test("a missing field is named", () => bad({}, /field "hidden_size"/, "hidden_size"));
test("a negative field is named", () => bad({ num_experts: -4 }, /field "num_experts"/));
test("a wrongly typed field is named", () => bad({ head_dim: "32" }, /field "head_dim"/));
test("top-k larger than the number of experts", () => bad({ num_experts_per_tok: 17 }, /"num_experts_per_tok": 17 exceeds num_experts 16/));
test("head counts that do not divide", () => bad({ num_key_value_heads: 3 }, /"num_key_value_heads": 3 does not divide/));
test("layer_types of the wrong length", () =>
  bad({ layer_types: ["full_attention"] }, /"layer_types": has 1 entries but num_hidden_layers is 4/));
test("unsupported model_type", () => bad({ model_type: "llama" }, /unsupported model_type "llama"/));
test("unknown score_func", () => bad({ score_func: "relu" }, /field "score_func"/));

test("RoPE theta: rope_theta, or transformers 5's rope_parameters, or the default; disagreement and other RoPE types are errors", () => {
  assert.equal(parseAfmoeConfig({ ...base, rope_theta: 50000 }).ropeTheta, 50000);
  const v5: Record<string, unknown> = { ...base, rope_parameters: { rope_type: "default", rope_theta: 123456 } };
  delete v5.rope_theta;
  assert.equal(parseAfmoeConfig(v5).ropeTheta, 123456);
  assert.equal(
    parseAfmoeConfig({ ...base, rope_theta: 123456, rope_parameters: { rope_type: "default", rope_theta: 123456 } }).ropeTheta,
    123456,
  );
  const none: Record<string, unknown> = { ...base };
  delete none.rope_theta;
  assert.equal(parseAfmoeConfig(none).ropeTheta, 10000);
  bad(
    { rope_parameters: { rope_type: "default", rope_theta: 20000 } },
    /"rope_parameters.rope_theta": 20000 disagrees with rope_theta 10000/,
  );
  bad({ rope_parameters: { rope_type: "yarn", rope_theta: 10000, factor: 4 } }, /"rope_parameters.rope_type": "yarn" is not supported/);
  bad({ rope_scaling: { type: "yarn", factor: 4 } }, /"rope_scaling": "yarn" RoPE scaling is not supported/);
  assert.equal(parseAfmoeConfig({ ...base, rope_scaling: { rope_type: "default" } }).ropeTheta, 10000);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { AfmoeForCausalLM, afmoeFusedGroups, readAfmoeConfig } from "../../../src/models/afmoe/index.js";
import { fusedSchemeConflicts } from "../../../src/models/fused.js";
import { Linear } from "../../../src/nn/layers.js";
import { TINY } from "../../helpers.js";

const linears = new AfmoeForCausalLM(readAfmoeConfig(TINY))
  .namedModules()
  .filter(([, m]) => m instanceof Linear)
  .map(([n]) => n);

test("vLLM's fused modules on the bundled model: qkv per layer, dense and shared gate/up, each MoE layer's experts", () => {
  const groups = afmoeFusedGroups(linears);
  // 4 qkv_proj, layer 0's mlp.gate_up_proj, and per MoE layer (1-3) shared_experts.gate_up_proj + experts
  assert.equal(groups.length, 4 + 1 + 3 * 2);
  const byName = new Map(groups.map((g) => [g.module, g.members]));
  assert.deepEqual(
    byName.get("model.layers.3.self_attn.qkv_proj"),
    ["q_proj", "k_proj", "v_proj"].map((p) => `model.layers.3.self_attn.${p}`),
  );
  assert.deepEqual(byName.get("model.layers.0.mlp.gate_up_proj"), ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]);
  assert.deepEqual(byName.get("model.layers.1.mlp.shared_experts.gate_up_proj"), [
    "model.layers.1.mlp.shared_experts.gate_proj",
    "model.layers.1.mlp.shared_experts.up_proj",
  ]);
  assert.equal(byName.get("model.layers.2.mlp.experts")?.length, 16 * 3);
  // the attention output gate, o_proj, down projections and router gates are modules of their own
  const grouped = new Set(groups.flatMap((g) => g.members));
  for (const alone of [
    "model.layers.1.self_attn.gate_proj",
    "model.layers.1.self_attn.o_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.mlp.shared_experts.down_proj",
    "model.layers.1.mlp.router.gate",
    "lm_head",
  ]) {
    assert.ok(linears.includes(alone), alone);
    assert.ok(!grouped.has(alone), alone);
  }
});

test("fusedSchemeConflicts: none for whole groups either way, one message per split group naming who has which scheme", () => {
  const groups = afmoeFusedGroups(linears);
  assert.deepEqual(
    fusedSchemeConflicts(groups, () => "W4A16"),
    [],
  );
  assert.deepEqual(
    fusedSchemeConflicts(groups, (n) => (/self_attn|shared_experts/.test(n) ? "unquantized" : "W4A16")),
    [],
  );
  const split = fusedSchemeConflicts(groups, (n) =>
    n === "model.layers.1.self_attn.k_proj" || n === "model.layers.2.mlp.experts.7.down_proj" ? "unquantized" : "W4A16",
  );
  assert.equal(split.length, 2);
  assert.match(
    split[0] as string,
    /^model\.layers\.1\.self_attn\.qkv_proj: vLLM fuses q_proj, k_proj, v_proj into one module with one quantization scheme, but W4A16: q_proj, v_proj; unquantized: k_proj$/,
  );
  assert.match(
    split[1] as string,
    /^model\.layers\.2\.mlp\.experts: vLLM runs its 48 routed-expert Linear layers as one fused MoE module .* and 43 more; unquantized: experts\.7\.down_proj$/,
  );
});

/**
 * compressed-tensors' target precedence (utils/match.py and lifecycle/apply.py at ac8e2ba): an
 * exact name before a regex before a class name; among regexes, the first in sorted order.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { matchTargets, schemeFor } from "../../src/quantization/match.js";
import { groupFor, parseQuantizationConfig } from "../../src/io/compressed-tensors.js";

const Q = "model.layers.1.self_attn.q_proj";
const E = "model.layers.1.mlp.experts.3.gate_proj";

test("match_targets' order: exact names, then regexes (sorted by their text), then class names", () => {
  const targets = ["Linear", "re:.*mlp.*", "re:.*experts.*", E];
  assert.deepEqual(matchTargets(E, ["Linear"], targets), [E, "re:.*experts.*", "re:.*mlp.*", "Linear"]);
  assert.deepEqual(matchTargets(Q, ["Linear"], targets), ["Linear"]);
  assert.deepEqual(matchTargets(Q, ["Linear"], ["re:self_attn"]), [], "a regex matches from the start of the name (re.match)");
});

test("schemeFor: the most specific target's group wins whatever the groups' order; ignore (by name or class) wins over all", () => {
  const all = { id: "all", targets: ["Linear"] };
  const mlp = { id: "mlp", targets: ["re:.*mlp.*"] };
  const experts = { id: "experts", targets: ["re:.*experts.*"] };
  const q = { id: "q", targets: [Q] };
  const groups = [all, mlp, experts, q];
  assert.equal(schemeFor(groups, [], E)?.id, "experts", "re:.*experts.* sorts before re:.*mlp.*, though listed after it");
  assert.equal(schemeFor(groups, [], "model.layers.1.mlp.shared_expert.up_proj")?.id, "mlp");
  assert.equal(schemeFor(groups, [], Q)?.id, "q", "an exact name before the class name of an earlier group");
  assert.equal(schemeFor(groups, [], "model.layers.1.self_attn.k_proj")?.id, "all");
  assert.equal(schemeFor(groups, ["re:.*experts.3.*"], E), null);
  assert.equal(schemeFor(groups, ["Linear"], Q), null, "ignore by class");
  assert.equal(schemeFor([mlp], [], Q), null, "no target matches");
  // a target named by two groups belongs to the later one (apply.py's target_to_scheme)
  assert.equal(
    schemeFor(
      [
        { id: "a", targets: ["Linear"] },
        { id: "b", targets: ["Linear"] },
      ],
      [],
      Q,
    )?.id,
    "b",
  );
});

test("groupFor (inspect, eval, the loader) follows the same rule on a parsed multi-group config", () => {
  const weights = (bits: number) => ({ num_bits: bits, type: "int", symmetric: true, strategy: "channel" });
  const cfg = parseQuantizationConfig(
    {
      quant_method: "compressed-tensors",
      format: "pack-quantized",
      config_groups: {
        group_0: { targets: ["Linear"], weights: weights(8), format: "int-quantized" },
        group_1: { targets: ["re:.*experts.*"], weights: weights(4) },
      },
      ignore: ["lm_head"],
    },
    "config.json",
  );
  assert.equal(groupFor(cfg, E)?.weights.numBits, 4, "the regex group, though a class-name group comes first");
  assert.equal(groupFor(cfg, Q)?.weights.numBits, 8);
  assert.equal(groupFor(cfg, "lm_head"), null);
});

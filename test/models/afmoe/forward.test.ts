import { test } from "node:test";
import assert from "node:assert/strict";
import { TINY, assertClose, golden, goldenInts, openAfmoe } from "../../helpers.js";

test("tiny-afmoe forward reproduces golden logits and every hidden state (rel err <= 1e-5, same argmax)", async () => {
  const g = golden("forward.safetensors");
  const ids = goldenInts(g, "input_ids");
  const [B, S] = g.info("input_ids").shape as [number, number];
  const { model, config } = openAfmoe(TINY);
  const out = await model.call({ ids: { ids: Int32Array.from(ids), shape: [B, S] }, outputHiddenStates: true });
  assert.equal(out.hiddenStates.length, config.numHiddenLayers + 1);
  for (const [i, h] of out.hiddenStates.entries()) assertClose(`hidden_states.${i}`, h, g.readF32(`hidden_states.${i}`), 1e-5);
  const ref = g.readF32("logits");
  assertClose("logits", out.logits, ref, 1e-5);
  const V = config.vocabSize;
  for (let r = 0; r < B * S; r++) {
    const argmax = (d: Float32Array): number => {
      let best = 0;
      for (let v = 1; v < V; v++) if ((d[r * V + v] as number) > (d[r * V + best] as number)) best = v;
      return best;
    };
    assert.equal(argmax(out.logits.data), argmax(ref.data), `argmax differs at row ${r}`);
  }
});

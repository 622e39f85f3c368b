import { test } from "node:test";
import assert from "node:assert/strict";
import { Tensor } from "../../src/engine/tensor.js";
import { giveBuffer, takeBuffer } from "../../src/engine/scratch.js";
import { RopeAttention } from "../../src/nn/attention.js";
import { RMSNorm, addNormed } from "../../src/nn/layers.js";
import { add } from "../../src/engine/ops.js";
import { Qwen3NextRMSNorm } from "../../src/models/qwen3_next/modeling.js";

/** Fixed pseudo-random values in [-0.5, 0.5). */
function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648 - 0.5;
  });
}

function attention(): RopeAttention {
  const a = new RopeAttention({ hidden: 16, heads: 4, kvHeads: 2, headDim: 4, ropeTheta: 10000, qkNormEps: 1e-6, window: null });
  let seed = 3;
  for (const [, p] of a.namedParameters())
    p.value = new Tensor(
      values(
        p.shape.reduce((x, y) => x * y, 1),
        seed++,
      ),
      p.shape,
    );
  return a;
}

test("attention: o_proj's input in scratch memory gives what a hooked o_proj is given, and a hook keeps its own input", async () => {
  const a = attention();
  const x1 = new Tensor(values(2 * 5 * 16, 11), [2, 5, 16]);
  const x2 = new Tensor(values(2 * 5 * 16, 12), [2, 5, 16]);
  const plain = [await a.call(x1), await a.call(x2)];
  const o = a.getSubmodule("o_proj");
  const kept: { x: Tensor; copy: Float32Array }[] = [];
  const remove = o.registerForwardHook((_m, x) => void kept.push({ x: x as Tensor, copy: Float32Array.from((x as Tensor).data) }));
  const hooked = [await a.call(x1), await a.call(x2)];
  remove();
  assert.deepEqual(hooked[0]?.data, plain[0]?.data);
  assert.deepEqual(hooked[1]?.data, plain[1]?.data);
  // the first call's input, kept by the hook, is unchanged by the second call
  assert.equal(kept.length, 2);
  for (const k of kept) assert.deepEqual(k.x.data, k.copy);
  assert.notDeepEqual(kept[0]?.copy, kept[1]?.copy);
});

/** `norm` with weight values(8, seed); x and y [3, 8] from the next two seeds; addNormed(x, norm, y) without hooks. */
async function normedCase(norm: RMSNorm, seed: number): Promise<{ x: Tensor; y: Tensor; plain: Tensor }> {
  (norm.namedParameters()[0] as [string, { value: Tensor | null }])[1].value = new Tensor(values(8, seed), [8]);
  const x = new Tensor(values(24, seed + 1), [3, 8]);
  const y = new Tensor(values(24, seed + 2), [3, 8]);
  return { x, y, plain: await addNormed(x, norm, y) };
}

test("addNormed: x + norm(y) alike with and without a hook on the norm, and a kept output stays", async () => {
  const norm = new RMSNorm(8, 1e-6);
  const { x, y, plain } = await normedCase(norm, 5);
  const kept: Tensor[] = [];
  const remove = norm.registerForwardHook((_m, _in, out) => void kept.push(out as Tensor));
  const hooked = await addNormed(x, norm, y);
  const copy = Float32Array.from((kept[0] as Tensor).data);
  await addNormed(x, norm, new Tensor(values(24, 8), [3, 8]));
  remove();
  assert.deepEqual(hooked.data, plain.data);
  assert.deepEqual((kept[0] as Tensor).data, copy);
});

test("scratch memory: the smallest free buffer that is large enough", () => {
  const [big, small] = [takeBuffer(1 << 20), takeBuffer(1 << 12)];
  giveBuffer(big);
  giveBuffer(small);
  assert.equal(takeBuffer(1 << 10), small);
  assert.equal(takeBuffer(1 << 10) === big, true);
});

test("addNormed: a norm subclass's own norm (Qwen3-Next's 1 + weight) with and without a hook", async () => {
  const norm = new Qwen3NextRMSNorm(8, 1e-6);
  const { x, y, plain } = await normedCase(norm, 9);
  const remove = norm.registerForwardHook(() => undefined);
  const hooked = await addNormed(x, norm, y);
  remove();
  assert.deepEqual(plain.data, hooked.data);
  assert.deepEqual(plain.data, add(x, await norm.call(y)).data);
});

test("causalAttention: grouped query heads in blocks of rows, each against the keys it can see, give each head's attention over the whole causal mask", async () => {
  const { ReferenceEngine } = await import("../../src/engine/index.js");
  const { ATTENTION_ROWS, causalAttention, causalBlocks, causalMask, toHeads, fromHeads } = await import("../../src/nn/attention.js");
  const ref = new ReferenceEngine();
  const [B, nH, nKV, D, Dv] = [2, 6, 2, 8, 5];
  const S = 2 * ATTENTION_ROWS + 22;
  const q = values(B * S * nH * D, 41);
  const k = values(B * S * nKV * D, 42);
  const v = values(B * S * nKV * Dv, 43);
  const head = (x: Float32Array, heads: number, d: number, b: number, h: number): Tensor => {
    const out = new Float32Array(S * d);
    for (let s = 0; s < S; s++) out.set(x.subarray(((b * S + s) * heads + h) * d, ((b * S + s) * heads + h + 1) * d), s * d);
    return new Tensor(out, [S, d]);
  };
  // windows shorter than a block, longer than one, and none
  for (const window of [5, ATTENTION_ROWS + 9, null]) {
    const blocks = causalBlocks(S, window);
    assert.equal(blocks.length, 3);
    if (window !== null) assert.ok((blocks[2]?.k0 ?? 0) > 0, "a windowed block leaves out the keys before its window");
    const ctx = await causalAttention(toHeads(q, B, S, nKV, (nH / nKV) * D), toHeads(k, B, S, nKV, D), toHeads(v, B, S, nKV, Dv), {
      B,
      S,
      nH,
      nKV,
      D,
      Dv,
      window,
      scale: 0.4,
    });
    const got = fromHeads(ctx, B, S, nKV, (nH / nKV) * Dv);
    const mask = causalMask(S, window);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < nH; h++) {
        const kv = Math.floor(h / (nH / nKV));
        const want = await ref.attention(head(q, nH, D, b, h), head(k, nKV, D, b, kv), head(v, nKV, Dv, b, kv), mask, 0.4);
        const mine = head(got, nH, Dv, b, h);
        for (let i = 0; i < want.size; i++)
          assert.ok(
            Math.abs((mine.data[i] as number) - (want.data[i] as number)) <= 1e-5,
            `window ${window}, batch ${b}, head ${h}, value ${i}: ${mine.data[i]} vs ${want.data[i]}`,
          );
      }
  }
});

test("attentionPairs: the (query, key) pairs causalAttention's engine calls score, per query head, windowed or not; at least the causal ones, at most S^2", async () => {
  const { getEngine } = await import("../../src/engine/index.js");
  const { ATTENTION_ROWS, attentionPairs, causalAttention, sumPairs } = await import("../../src/nn/attention.js");
  const [nH, nKV, D] = [4, 2, 8];
  const engine = getEngine();
  const attend = engine.attention;
  for (const S of [1, ATTENTION_ROWS, 2 * ATTENTION_ROWS + 22])
    for (const window of [5, ATTENTION_ROWS + 9, null]) {
      let pairs = 0;
      engine.attention = (q, k, v, mask, scale, into) => {
        pairs += (q.dim(0) * k.dim(0)) / (nH / nKV);
        return attend.call(engine, q, k, v, mask, scale, into);
      };
      try {
        const x = values(S * nH * D, 51);
        await causalAttention(x, values(S * nKV * D, 52), values(S * nKV * D, 53), { B: 1, S, nH, nKV, D, window });
      } finally {
        engine.attention = attend;
      }
      // per key/value head, its query heads' rows: the pairs of one query head
      assert.equal(attentionPairs(S, window), pairs / nKV, `S ${S}, window ${window}`);
      const causal = Array.from({ length: S }, (_, i) => (window === null ? i + 1 : Math.min(i + 1, window))).reduce((a, b) => a + b, 0);
      assert.ok(pairs / nKV >= causal && pairs / nKV <= S * S, `S ${S}, window ${window}: ${pairs / nKV} pairs`);
    }
  assert.equal(sumPairs([3, 70], null), attentionPairs(3, null) + attentionPairs(70, null));
});

/**
 * The WebAssembly encoder (engine/wasm.ts): constants across the signed LEB128 boundaries, local
 * indices, loops and SIMD lanes run as written.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { I32, V128, type WasmFunction, lanes32, op, wasmModule } from "../../src/engine/wasm.js";

const I32_STORE = [0x36, 2, 0];

/** Instantiate `fn` over a new memory of one page (whose first floats are `input`), call it with `args`; the memory after. */
function run(fn: WasmFunction, args: number[], input: number[] = []): ArrayBuffer {
  const memory = new WebAssembly.Memory({ initial: 1 });
  new Float32Array(memory.buffer, 0, input.length).set(input);
  const inst = new WebAssembly.Instance(new WebAssembly.Module(wasmModule([fn])), { env: { memory } });
  (inst.exports[fn.name] as (...a: number[]) => void)(...args);
  return memory.buffer;
}

test("i32 constants on both sides of every LEB128 byte boundary", () => {
  const values = [0, 1, 63, 64, -1, -64, -65, 127, 128, 8191, 8192, -8193, 624485, 2 ** 31 - 1, -(2 ** 31)];
  const body = values.flatMap((v, k) => [op.i32(4 * k), op.i32(v), I32_STORE]);
  const got = new Int32Array(run({ name: "consts", params: [], locals: [], body }, []));
  assert.deepEqual([...got.subarray(0, values.length)], values);
});

test("a loop over SIMD lanes: f64 pairs promoted, multiplied and demoted; lanes picked by lanes32", () => {
  // for i in 0..n step 16: out[i] = f32(f64(x[i]) * 3), then the lanes reversed
  const [x, n, i, v] = [0, 1, 2, 3];
  const half = (hi: boolean) => [
    op.get(v),
    ...(hi ? [op.get(v), op.shuffle(lanes32(2, 3, 2, 3))] : []),
    op.f64x2PromoteLow,
    op.get(4),
    op.f64x2Mul,
    op.f32x4DemoteZero,
  ];
  const body = [
    op.i32(3),
    [0xb7],
    op.f64x2Splat,
    op.set(4), // f64.convert_i32_s
    op.i32(0),
    op.set(i),
    op.block,
    op.loop,
    op.get(i),
    op.get(n),
    op.i32GeU,
    op.brIf(1),
    op.get(x),
    op.get(i),
    op.i32Add,
    op.vLoad,
    op.set(v),
    op.get(x),
    op.get(i),
    op.i32Add,
    ...half(false),
    ...half(true),
    op.shuffle(lanes32(0, 1, 4, 5)),
    op.tee(v),
    op.get(v),
    op.shuffle(lanes32(3, 2, 1, 0)),
    op.vStore,
    op.get(i),
    op.i32(16),
    op.i32Add,
    op.set(i),
    op.br(0),
    op.end,
    op.end,
  ];
  const memory = run({ name: "triple", params: [I32, I32], locals: [I32, V128, V128], body }, [0, 32], [1, 2, 3, 4, 0.1, -5, 1e30, 7]);
  const expect = [4, 3, 2, 1, 7, 1e30, -5, 0.1].map((a) => Math.fround(Math.fround(a) * 3));
  assert.deepEqual([...new Float32Array(memory, 0, 8)], expect);
});

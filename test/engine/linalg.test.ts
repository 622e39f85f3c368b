import { test } from "node:test";
import assert from "node:assert/strict";
import { LINALG_BLOCK, choleskyLowerInPlace, upperCholeskyOfInverse, upperCholeskyOfInverseFast } from "../../src/engine/linalg.js";
import { OrtEngine, ReferenceEngine } from "../../src/engine/index.js";
import { assertClose } from "../helpers.js";
import { NumericalError } from "../../src/errors.js";
import { randn } from "../rand.js";

function spd(n: number, seed: number): Float64Array {
  const x = randn([3 * n, n], seed);
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let r = 0; r < 3 * n; r++) s += (x.data[r * n + i] as number) * (x.data[r * n + j] as number);
      A[i * n + j] = s + (i === j ? 0.1 : 0);
    }
  return A;
}

test("upperCholeskyOfInverse: U upper triangular with U^T U A = I", () => {
  for (const n of [1, 5, 37]) {
    const A = spd(n, n);
    const U = upperCholeskyOfInverse(A, n);
    let maxErr = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) assert.equal(U[i * n + j], 0);
    // (U^T U) A = I
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) {
          let inv = 0;
          for (let m = 0; m <= Math.min(i, k); m++) inv += (U[m * n + i] as number) * (U[m * n + k] as number);
          s += inv * (A[k * n + j] as number);
        }
        maxErr = Math.max(maxErr, Math.abs(s - (i === j ? 1 : 0)));
      }
    }
    assert.ok(maxErr < 1e-9, `n=${n}: max |U^T U A - I| = ${maxErr}`);
    assert.ok((U[0] as number) > 0);
  }
});

test("a matrix that is not positive definite is a NumericalError", () => {
  assert.throws(
    () => choleskyLowerInPlace(Float64Array.from([1, 2, 2, 1]), 2, "H"),
    (e: unknown) => e instanceof NumericalError && /H: not positive definite/.test(e.message),
  );
  assert.throws(() => upperCholeskyOfInverse(Float64Array.from([0, 0, 0, 0]), 2), NumericalError);
});

test("upperCholeskyOfInverseFast (blocked, through the engine) equals the float64 reference to float32 accuracy", async () => {
  // 300 splits unevenly (160 + 140, and 160 again into 96 + 64); LINALG_BLOCK and below take the small path
  for (const [n, engine] of [
    [300, new OrtEngine()],
    [LINALG_BLOCK + 40, new ReferenceEngine()],
    [LINALG_BLOCK, new OrtEngine()],
  ] as const) {
    const A = spd(n, n);
    const ref = upperCholeskyOfInverse(A, n);
    const fast = await upperCholeskyOfInverseFast(new Float32Array(A), n, "H", engine);
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) assert.equal(fast[i * n + j], 0, `n=${n}: U[${i}, ${j}] below the diagonal`);
    assertClose(`U (n=${n}, ${engine.name})`, fast, ref, 1e-5);
  }
});

test("upperCholeskyOfInverseFast: not positive definite is a NumericalError naming the matrix", async () => {
  const n = 2 * LINALG_BLOCK + 8;
  const A = new Float32Array(spd(n, 3));
  A[(n - 1) * n + (n - 1)] = -1; // reversed first, so this pivot fails in the first small block
  await assert.rejects(
    upperCholeskyOfInverseFast(A, n, "layer 1 H"),
    (e: unknown) => e instanceof NumericalError && /layer 1 H: not positive definite/.test(e.message),
  );
  const B = new Float32Array(spd(n, 4));
  B[0] = -1; // fails in the last Schur complement
  await assert.rejects(
    upperCholeskyOfInverseFast(B, n, "layer 2 H"),
    (e: unknown) => e instanceof NumericalError && /layer 2 H: not positive definite/.test(e.message),
  );
});

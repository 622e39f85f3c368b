import { test } from "node:test";
import assert from "node:assert/strict";
import { choleskyLowerInPlace, upperCholeskyOfInverse } from "../../src/engine/linalg.js";
import { NumericalError } from "../../src/errors.js";
import { randn } from "../rand.js";

function spd(n: number, seed: number): Float64Array {
  const x = randn([3 * n, n], seed);
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
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
  assert.throws(() => choleskyLowerInPlace(Float64Array.from([1, 2, 2, 1]), 2, "H"), (e: unknown) => e instanceof NumericalError && /H: not positive definite/.test(e.message));
  assert.throws(() => upperCholeskyOfInverse(Float64Array.from([0, 0, 0, 0]), 2), NumericalError);
});

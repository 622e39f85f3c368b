import { NumericalError } from "../errors.js";

/**
 * Dense linear algebra for GPTQ, in float64 (inputs and outputs float64 row-major n x n).
 * O(n^3) but n is a Linear's input size (<= a few thousand).
 */

/** Lower Cholesky factor L (A = L L^T) in place; throws NumericalError if A is not positive definite. */
export function choleskyLowerInPlace(A: Float64Array, n: number, what = "matrix"): void {
  for (let j = 0; j < n; j++) {
    let d = A[j * n + j] as number;
    const rj = j * n;
    for (let k = 0; k < j; k++) d -= (A[rj + k] as number) ** 2;
    if (!(d > 0)) throw new NumericalError(`${what}: not positive definite (pivot ${j} is ${d})`);
    const ljj = Math.sqrt(d);
    A[rj + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let s = A[ri + j] as number;
      for (let k = 0; k < j; k++) s -= (A[ri + k] as number) * (A[rj + k] as number);
      A[ri + j] = s / ljj;
    }
    for (let k = j + 1; k < n; k++) A[rj + k] = 0;
  }
}

/** Inverse of a lower-triangular L, in place (row by row; each step is a row axpy, cache-friendly). */
export function invertLowerInPlace(L: Float64Array, n: number): void {
  const X = new Float64Array(n * n);
  const v = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    // v[0:i] = L[i, 0:i] X[0:i, 0:i]
    v.fill(0, 0, i);
    for (let k = 0; k < i; k++) {
      const l = L[i * n + k] as number;
      if (l === 0) continue;
      const xk = k * n;
      for (let j = 0; j <= k; j++) v[j] = (v[j] as number) + l * (X[xk + j] as number);
    }
    const inv = 1 / (L[i * n + i] as number);
    for (let j = 0; j < i; j++) X[i * n + j] = -(v[j] as number) * inv;
    X[i * n + i] = inv;
  }
  L.set(X);
}

/**
 * GPTQ's Hinv: the upper triangular U with U^T U = inverse(A), for a symmetric positive
 * definite A (what torch computes as cholesky(cholesky_inverse(cholesky(A)), upper=True)).
 * Computed as U = J L^-1 J where J A J = L L^T (the Cholesky factor of A with rows and columns
 * reversed): A = V V^T with V = J L J upper, so inverse(A) = V^-T V^-1 and U = V^-1.
 * One factorization and one triangular inverse. Throws NumericalError when A is not positive definite.
 */
export function upperCholeskyOfInverse(A: Float64Array, n: number, what = "Hessian"): Float64Array {
  const R = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) R[i * n + j] = A[(n - 1 - i) * n + (n - 1 - j)] as number;
  choleskyLowerInPlace(R, n, what);
  invertLowerInPlace(R, n);
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) U[i * n + j] = R[(n - 1 - i) * n + (n - 1 - j)] as number;
  return U;
}

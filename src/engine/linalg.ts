import { NumericalError } from "../errors.js";
import type { Engine } from "./engine.js";
import { getEngine } from "./index.js";
import { Tensor } from "./tensor.js";

/**
 * Dense linear algebra for GPTQ (row-major n x n). O(n^3), n a Linear's input size (<= a few
 * thousand). The float64 TypeScript functions are the reference; upperCholeskyOfInverseFast
 * does the same blockwise with its products through the engine.
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
function invertLowerInPlace(L: Float64Array, n: number): void {
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
  const R = A.slice(0, n * n).reverse(); // J A J: rows and columns reversed is the flat array reversed
  choleskyLowerInPlace(R, n, what);
  invertLowerInPlace(R, n);
  return R.reverse(); // J L^-1 J: L^-1 is lower triangular, so this is upper triangular
}

/** Below this size the factorizations run in float64 TypeScript; above, they recurse through the engine. */
export const LINALG_BLOCK = 128;

/** Inverse of the lower Cholesky factor of A (float64 TypeScript, rounded to float32). */
function cholInvSmall(A: Float32Array, n: number, what: string): Float32Array {
  const L = new Float64Array(A);
  choleskyLowerInPlace(L, n, what);
  invertLowerInPlace(L, n);
  return new Float32Array(L);
}

/** Rows [r0, r1) x columns [c0, c1) of the n x n matrix A, as a new row-major array. */
function sub(A: Float32Array, n: number, r0: number, r1: number, c0: number, c1: number): Float32Array {
  const w = c1 - c0;
  const S = new Float32Array((r1 - r0) * w);
  for (let i = r0; i < r1; i++) S.set(A.subarray(i * n + c0, i * n + c1), (i - r0) * w);
  return S;
}

function transpose(A: Float32Array, rows: number, cols: number): Float32Array {
  const T = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) T[j * rows + i] = A[i * cols + j] as number;
  return T;
}

/**
 * L^-1 for the lower Cholesky factor L of the symmetric positive definite A (float32 n x n),
 * recursively on 2 x 2 blocks: with A = [[A11, .], [A21, A22]], L11^-1 from A11, L21 = A21 L11^-T,
 * L22^-1 from the Schur complement A22 - L21 L21^T, and the lower-left block -L22^-1 L21 L11^-1.
 * The products go through the engine (float32, as torch's GPTQ runs); blocks of at most
 * LINALG_BLOCK are factored in float64. Throws NumericalError when A is not positive definite.
 */
async function cholInvBlocked(A: Float32Array, n: number, what: string, engine: Engine): Promise<Float32Array> {
  if (n <= LINALG_BLOCK) return cholInvSmall(A, n, what);
  const m1 = Math.ceil(n / 2 / 32) * 32;
  const m2 = n - m1;
  const X11 = await cholInvBlocked(sub(A, n, 0, m1, 0, m1), m1, what, engine);
  const X11t = new Tensor(transpose(X11, m1, m1), [m1, m1]);
  const L21 = await engine.matmul(new Tensor(sub(A, n, m1, n, 0, m1), [m2, m1]), X11t);
  const S = new Tensor(sub(A, n, m1, n, m1, n), [m2, m2]);
  await engine.subtractProduct(S, L21, new Tensor(transpose(L21.data, m2, m1), [m1, m2]));
  const X22 = await cholInvBlocked(S.data, m2, what, engine);
  const T = await engine.matmul(L21, new Tensor(X11, [m1, m1]));
  const X21 = await engine.matmul(new Tensor(X22, [m2, m2]), T);
  const X = new Float32Array(n * n);
  for (let i = 0; i < m1; i++) X.set(X11.subarray(i * m1, (i + 1) * m1), i * n);
  for (let i = 0; i < m2; i++) {
    const r = (m1 + i) * n;
    for (let j = 0; j < m1; j++) X[r + j] = -(X21.data[i * m1 + j] as number);
    X.set(X22.subarray(i * m2, (i + 1) * m2), r + m1);
  }
  return X;
}

/**
 * upperCholeskyOfInverse for float32 A through the engine: the same U = J L^-1 J, with L^-1
 * computed blockwise (cholInvBlocked). Agrees with the float64 reference to float32 accuracy.
 */
export async function upperCholeskyOfInverseFast(
  A: Float32Array,
  n: number,
  what = "Hessian",
  engine: Engine = getEngine(),
): Promise<Float32Array> {
  const X = await cholInvBlocked(A.slice(0, n * n).reverse(), n, what, engine);
  return X.reverse();
}

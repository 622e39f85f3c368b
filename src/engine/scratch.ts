/**
 * Reusable scratch memory (fresh large typed arrays cost page faults on first touch, about as
 * much as the arithmetic that fills them). A buffer is taken while in use, so overlapping calls
 * never share one; one pool per thread.
 */
const freeBuffers: ArrayBuffer[] = [];

/** Buffers the pool keeps at most (the most recently given back)... */
const KEPT = 12;
/** ...and bytes (the plan counts them, pipeline/plan.ts). */
export const SCRATCH_KEPT_BYTES = 256 * 1024 ** 2;

/** A buffer of at least `bytes` bytes: the smallest free one that is large enough, else a new one. */
export function takeBuffer(bytes: number): ArrayBuffer {
  let best = -1;
  for (let i = 0; i < freeBuffers.length; i++) {
    const n = (freeBuffers[i] as ArrayBuffer).byteLength;
    if (n >= bytes && (best < 0 || n < (freeBuffers[best] as ArrayBuffer).byteLength)) best = i;
  }
  return best >= 0 ? (freeBuffers.splice(best, 1)[0] as ArrayBuffer) : new ArrayBuffer(bytes);
}

/** Hand a buffer back (the pool keeps the most recent, at most KEPT and SCRATCH_KEPT_BYTES). */
export function giveBuffer(b: ArrayBufferLike): void {
  freeBuffers.push(b as ArrayBuffer);
  let bytes = freeBuffers.reduce((a, f) => a + f.byteLength, 0);
  while (freeBuffers.length > KEPT || bytes > SCRATCH_KEPT_BYTES) bytes -= (freeBuffers.shift() as ArrayBuffer).byteLength;
}

/** Run `fn` with scratch arrays of `sizes` floats, given back when it ends (also when it throws). */
export async function withFloats<N extends readonly number[], T>(
  sizes: N,
  fn: (bufs: { [K in keyof N]: Float32Array }) => Promise<T>,
): Promise<T> {
  const bufs = sizes.map((n) => takeFloats(n)) as { [K in keyof N]: Float32Array };
  try {
    return await fn(bufs);
  } finally {
    for (const b of bufs) giveBuffer(b.buffer);
  }
}

/** `n` floats of scratch memory (give back its `.buffer`). */
export function takeFloats(n: number): Float32Array {
  return new Float32Array(takeBuffer(4 * n), 0, n);
}

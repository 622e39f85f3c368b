/**
 * Reusable scratch memory (fresh large typed arrays cost page faults on first touch, about as
 * much as the arithmetic that fills them). A buffer is taken while in use, so overlapping calls
 * never share one; one pool per thread.
 */
const freeBuffers: ArrayBuffer[] = [];

/** A buffer of at least `bytes` bytes, reused when one is free. */
export function takeBuffer(bytes: number): ArrayBuffer {
  const i = freeBuffers.findIndex((b) => b.byteLength >= bytes);
  return i >= 0 ? (freeBuffers.splice(i, 1)[0] as ArrayBuffer) : new ArrayBuffer(bytes);
}

/** Hand a buffer back (the pool keeps the 8 most recent). */
export function giveBuffer(b: ArrayBufferLike): void {
  freeBuffers.push(b as ArrayBuffer);
  if (freeBuffers.length > 8) freeBuffers.shift();
}

/** `n` floats of scratch memory (give back its `.buffer`). */
export function takeFloats(n: number): Float32Array {
  return new Float32Array(takeBuffer(4 * n), 0, n);
}

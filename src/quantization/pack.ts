import { InternalError, UsageError } from "../errors.js";

/**
 * compressed-tensors int packing: values shifted to unsigned (u = q + 2^(b-1)); element i of
 * a packed line occupies bits i*b .. i*b+b-1 of a little-endian stream of 32-bit words,
 * stored as signed int32. Lines are padded with zeros to whole words.
 */
function checkBits(bits: number): number {
  if (![2, 4, 8].includes(bits)) throw new UsageError(`cannot pack ${bits}-bit values (2, 4 or 8)`);
  return 32 / bits;
}

/** Pack q [rows, cols] along dim 1: [rows, ceil(cols * bits / 32)]. */
export function packRows(q: ArrayLike<number>, rows: number, cols: number, bits: number): Int32Array {
  const per = checkBits(bits);
  const words = Math.ceil(cols / per);
  const out = new Int32Array(rows * words);
  const off = 1 << (bits - 1);
  const mask = (1 << bits) - 1;
  // one word at a time, in integer arithmetic (this runs over every weight of a model)
  if (bits === 4 && cols % 8 === 0 && q instanceof Int8Array) {
    packInt4Rows(q, out);
    return out;
  }
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let w = 0; w < words; w++) {
      const c0 = w * per;
      const c1 = Math.min(cols, c0 + per);
      let word = 0;
      for (let c = c0, shift = 0; c < c1; c++, shift += bits) word |= (((q[row + c] as number) + off) & mask) << shift;
      out[r * words + w] = word;
    }
  }
  return out;
}

/** packRows for 4-bit codes in whole words (rows of a multiple of 8): eight codes per word, unrolled. */
function packInt4Rows(q: Int8Array, out: Int32Array): void {
  for (let w = 0, i = 0; w < out.length; w++, i += 8)
    out[w] =
      (((q[i] as number) + 8) & 15) |
      ((((q[i + 1] as number) + 8) & 15) << 4) |
      ((((q[i + 2] as number) + 8) & 15) << 8) |
      ((((q[i + 3] as number) + 8) & 15) << 12) |
      ((((q[i + 4] as number) + 8) & 15) << 16) |
      ((((q[i + 5] as number) + 8) & 15) << 20) |
      ((((q[i + 6] as number) + 8) & 15) << 24) |
      ((((q[i + 7] as number) + 8) & 15) << 28);
}

export function unpackRows(packed: Int32Array, rows: number, cols: number, bits: number): Int8Array {
  const per = checkBits(bits);
  const words = Math.ceil(cols / per);
  if (packed.length !== rows * words)
    throw new InternalError(`packed array has ${packed.length} words, [${rows}, ${cols}] at ${bits} bits needs ${rows * words}`);
  const out = new Int8Array(rows * cols);
  const off = 2 ** (bits - 1);
  const mask = 2 ** bits - 1;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const word = packed[r * words + Math.floor(c / per)] as number;
      out[r * cols + c] = ((word >>> ((c % per) * bits)) & mask) - off;
    }
  }
  return out;
}

/** Pack q [rows, cols] along dim 0 (zero points): [ceil(rows * bits / 32), cols]. */
export function packColumns(q: ArrayLike<number>, rows: number, cols: number, bits: number): Int32Array {
  const t = new Int32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = q[r * cols + c] as number;
  const packedT = packRows(t, cols, rows, bits); // [cols, words]
  const words = Math.ceil(rows / (32 / bits));
  const out = new Int32Array(words * cols);
  for (let c = 0; c < cols; c++) for (let w = 0; w < words; w++) out[w * cols + c] = packedT[c * words + w] as number;
  return out;
}

export function unpackColumns(packed: Int32Array, rows: number, cols: number, bits: number): Int8Array {
  const words = Math.ceil(rows / (32 / bits));
  const t = new Int32Array(cols * words);
  for (let w = 0; w < words; w++) for (let c = 0; c < cols; c++) t[c * words + w] = packed[w * cols + c] as number;
  const unT = unpackRows(t, cols, rows, bits); // [cols, rows]
  const out = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = unT[c * rows + r] as number;
  return out;
}

/**
 * compressed-tensors' NVFP4 packing (pack_fp4_to_uint8): two E2M1 codes per byte along a row,
 * the even column in the low nibble; [rows, cols / 2] bytes (cols even).
 */
export function packFp4(codes: ArrayLike<number>, rows: number, cols: number): Uint8Array {
  if (cols % 2 !== 0) throw new UsageError(`NVFP4 packing needs an even number of columns, got ${cols}`);
  const out = new Uint8Array((rows * cols) / 2);
  for (let i = 0; i < out.length; i++) out[i] = ((codes[2 * i] as number) & 15) | (((codes[2 * i + 1] as number) & 15) << 4);
  return out;
}

export function unpackFp4(packed: Uint8Array, rows: number, cols: number): Uint8Array {
  if (packed.length * 2 !== rows * cols)
    throw new InternalError(`packed FP4 array has ${packed.length} bytes, [${rows}, ${cols}] needs ${(rows * cols) / 2}`);
  const out = new Uint8Array(rows * cols);
  for (let i = 0; i < packed.length; i++) {
    const b = packed[i] as number;
    out[2 * i] = b & 15;
    out[2 * i + 1] = b >> 4;
  }
  return out;
}

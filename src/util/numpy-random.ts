/**
 * NumPy's default generator, bit for bit: `np.random.default_rng(seed)` (SeedSequence -> PCG64)
 * and `Generator.permutation(n)`. Hugging Face datasets' `Dataset.shuffle(seed=s)` is
 * `select(default_rng(s).permutation(len))`, the draw every llm-compressor example makes
 * (`ds.shuffle(seed=42).select(range(n))`), so moecal's `--seed` picks the same calibration
 * samples as those scripts. Checked against NumPy 2.4 (test/util/numpy-random.test.ts).
 */
import { UsageError } from "../errors.js";

const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
/** PCG_DEFAULT_MULTIPLIER_128 */
const PCG_MULT = (2549297995355413924n << 64n) + 4865540595714422341n;

// SeedSequence constants (numpy/random/bit_generator.pyx)
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const POOL_SIZE = 4;

/** A seed as NumPy's `default_rng` takes it: a non-negative integer of any size. */
export type Seed = number | bigint;

/**
 * Parse a seed written as decimal digits, as `np.random.default_rng(int(text))` would take it;
 * anything else (negative, fractional, exponent notation) is refused with the reason.
 */
export function parseSeed(text: string): bigint {
  const t = text.trim();
  if (/^-\d+$/.test(t)) throw new UsageError(`seed ${text}: NumPy's default_rng refuses negative seeds; use a non-negative integer`);
  if (!/^\d+$/.test(t))
    throw new UsageError(
      `seed ${JSON.stringify(text)}: must be a non-negative integer written in decimal digits (NumPy's default_rng takes integers of any size, not fractions or text)`,
    );
  if (t.length > 10_000) throw new UsageError(`seed: ${t.length} digits is over the limit of 10000`);
  return BigInt(t);
}

/** A non-negative integer seed as little-endian 32-bit words (NumPy's `_coerce_to_uint32_array`). */
function seedWords(seed: Seed): number[] {
  if (typeof seed === "number" && (!Number.isSafeInteger(seed) || seed < 0))
    throw new UsageError(`seed must be a non-negative integer, got ${seed}`);
  let v = BigInt(seed);
  if (v < 0n) throw new UsageError(`seed must be a non-negative integer, got ${seed}`);
  const words: number[] = [];
  do {
    words.push(Number(v & 0xffffffffn));
    v >>= 32n;
  } while (v > 0n);
  return words;
}

/** `SeedSequence(seed).generate_state(nWords32, uint32)`. */
export function seedSequenceState(seed: Seed, nWords32: number): Uint32Array {
  const entropy = seedWords(seed);
  let hashA = INIT_A;
  const hashmix = (value: number): number => {
    let v = (value ^ hashA) >>> 0;
    hashA = Math.imul(hashA, MULT_A) >>> 0;
    v = Math.imul(v, hashA) >>> 0;
    return (v ^ (v >>> 16)) >>> 0;
  };
  const mix = (x: number, y: number): number => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = new Uint32Array(POOL_SIZE);
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(entropy[i] ?? 0);
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) {
      if (src !== dst) pool[dst] = mix(pool[dst] as number, hashmix(pool[src] as number));
    }
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst] as number, hashmix(entropy[src] as number));
  }
  const out = new Uint32Array(nWords32);
  let hashB = INIT_B;
  for (let i = 0; i < nWords32; i++) {
    let v = ((pool[i % POOL_SIZE] as number) ^ hashB) >>> 0;
    hashB = Math.imul(hashB, MULT_B) >>> 0;
    v = Math.imul(v, hashB) >>> 0;
    out[i] = (v ^ (v >>> 16)) >>> 0;
  }
  return out;
}

/** PCG64 (XSL-RR 128/64) as NumPy runs it, with NumPy's buffered 32-bit draws. */
class Pcg64 {
  private state = 0n;
  private readonly inc: bigint;
  private spare: number | null = null;

  /** `PCG64(SeedSequence(seed))`. */
  constructor(seed: Seed) {
    const w = seedSequenceState(seed, 8);
    const u64 = (k: number): bigint => (BigInt(w[2 * k + 1] as number) << 32n) | BigInt(w[2 * k] as number);
    const initState = (u64(0) << 64n) | u64(1);
    const initSeq = (u64(2) << 64n) | u64(3);
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
  }

  private step(): void {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  nextUint64(): bigint {
    this.step();
    const hi = this.state >> 64n;
    const x = (hi ^ this.state) & MASK64;
    const rot = hi >> 58n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
  }

  nextUint32(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const v = this.nextUint64();
    this.spare = Number(v >> 32n);
    return Number(v & 0xffffffffn);
  }

  /** Uniform integer in [0, max] by masked rejection (NumPy's `random_interval`); max < 2^32. */
  interval(max: number): number {
    if (max === 0) return 0;
    let mask = max;
    mask |= mask >>> 1;
    mask |= mask >>> 2;
    mask |= mask >>> 4;
    mask |= mask >>> 8;
    mask |= mask >>> 16;
    mask >>>= 0;
    for (;;) {
      const v = (this.nextUint32() & mask) >>> 0;
      if (v <= max) return v;
    }
  }
}

/** `np.random.default_rng(seed).permutation(n)`. */
export function numpyPermutation(n: number, seed: Seed): number[] {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new UsageError(`permutation length must be an integer in [0, 2^32), got ${n}`);
  const out = Array.from({ length: n }, (_, i) => i);
  const g = new Pcg64(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = g.interval(i);
    const t = out[i] as number;
    out[i] = out[j] as number;
    out[j] = t;
  }
  return out;
}

/** `Dataset.shuffle(seed)` of Hugging Face datasets: the items in `default_rng(seed).permutation` order. */
export function hfShuffled<T>(items: readonly T[], seed: Seed): T[] {
  return numpyPermutation(items.length, seed).map((i) => items[i] as T);
}

import { InvalidArgumentError } from "commander";
import { MoecalError } from "../errors.js";
import { parseSeed } from "../util/numpy-random.js";
import { parseBytes } from "../pipeline/plan-report.js";

/** Parser for an integer option (>= min), with the option named in the error. */
export function intOption(name: string, min = 1): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${value}"`);
    return n;
  };
}

export function boolOption(name: string): (value: string) => boolean {
  return (value) => {
    if (value === "true") return true;
    if (value === "false") return false;
    throw new InvalidArgumentError(`${name} must be true or false, got "${value}"`);
  };
}

/** Parser for --seed: a non-negative integer of any size, as NumPy's default_rng takes it. */
export function seedOption(value: string): bigint {
  try {
    return parseSeed(value);
  } catch (e) {
    if (e instanceof MoecalError) throw new InvalidArgumentError(`--seed: ${e.message}`);
    throw e;
  }
}

/** Parser for a size option (--max-memory): bytes, or a number with K, M, G or T. */
export function sizeOption(value: string): number {
  try {
    return parseBytes(value);
  } catch (e) {
    if (e instanceof MoecalError) throw new InvalidArgumentError(e.message);
    throw e;
  }
}

/** A size of at least `min` bytes, the option named in the error (`min` as the user would write it). */
export function minSizeOption(name: string, min: string): (value: string) => number {
  return (value) => {
    const n = sizeOption(value);
    if (n < parseBytes(min)) throw new InvalidArgumentError(`${name} must be at least ${min}, got "${value}"`);
    return n;
  };
}

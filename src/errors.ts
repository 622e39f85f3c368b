/**
 * The one error family of moecal. Every failure a user can cause surfaces as a
 * MoecalError subclass with a stable `code`; the CLI prints `message` and exits non-zero
 * (2 for a usage error, 70 for an internal error, 1 for everything else).
 */
export class MoecalError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A file on disk (safetensors, index.json) is malformed or inconsistent. */
export class CheckpointFormatError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_CHECKPOINT_FORMAT", message, options);
  }
}

/** config.json (or another configuration) has a missing, invalid or inconsistent field. */
export class ConfigError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_CONFIG", message, options);
  }
}

/** Checkpoint tensors do not match what the model expects (missing, unexpected, wrong shape). */
export class WeightMappingError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_WEIGHT_MAPPING", message, options);
  }
}

/** NaN/Inf, failed factorisations and other numerical problems. */
export class NumericalError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_NUMERICAL", message, options);
  }
}

/** Wrong use of the API or CLI: bad option values, missing files, existing outputs. */
export class UsageError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_USAGE", message, options);
  }
}

/**
 * A distributed run's job failed in a worker, or could not be done (its error's code and message,
 * the worker named; E_USAGE a usage error): the run stops with it.
 */
export class RemoteJobError extends MoecalError {}

/** Reading or writing a file failed (disk full, permissions, a file that vanished). */
export class IoError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_IO", message, options);
  }
}

/** An invariant of moecal's own code does not hold: a bug to report, never the user's doing. */
export class InternalError extends MoecalError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("E_INTERNAL", message, options);
  }
}

/** A factory for the error class that fits the caller (a model file is a bad file, a dataset a bad option). */
export type ErrorFactory = (message: string, options?: { cause?: unknown }) => MoecalError;
export const asFormatError: ErrorFactory = (m, o) => new CheckpointFormatError(m, o);
export const asUsageError: ErrorFactory = (m, o) => new UsageError(m, o);

/** The run was stopped by a signal (Ctrl-C, SIGTERM...) at a safe point; nothing was committed. */
export class InterruptedError extends MoecalError {
  readonly signal: NodeJS.Signals;
  constructor(signal: NodeJS.Signals) {
    super("E_INTERRUPTED", `interrupted (${signal})`);
    this.signal = signal;
  }
}

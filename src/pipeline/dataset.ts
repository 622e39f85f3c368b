import path from "node:path";
import { SAMPLE_OPTIONS, checkOptions } from "./options.js";
import { MessageChannel, type MessagePort, Worker, receiveMessageOnPort } from "node:worker_threads";
import { UsageError, asUsageError } from "../errors.js";
import { readRegularFile } from "../io/files.js";
import type { LoadedTokenizer } from "../io/tokenizer.js";
import { type Seed, hfShuffled } from "../util/numpy-random.js";

/** Largest dataset file read (it is held in memory as one string). */
export const MAX_DATASET_BYTES = 256 * 1024 ** 2;

/** Bounds on rendering one sample's chat template. */
export const CHAT_TEMPLATE_LIMITS = {
  /** wall time for one sample's rendering before the template is stopped as runaway */
  timeoutMs: 5000,
  /** characters one rendering may produce */
  maxChars: 64 * 1024 ** 2,
  /** memory of the rendering thread */
  maxHeapMb: 1024,
} as const;

export interface ChatMessage {
  role: string;
  content: string;
}

/** A raw sample before tokenization: plain text, or chat messages to render with the template. */
export type RawSample = { text: string } | { messages: ChatMessage[] };

/** Why `v` is not a list of chat messages, or null when it is one. */
function messagesProblem(v: unknown): string | null {
  if (!Array.isArray(v)) return `"messages" is not a list`;
  for (const [i, m] of v.entries()) {
    if (typeof m !== "object" || m === null) return `message ${i + 1} is not an object`;
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== "string") return `message ${i + 1} has no "role" string`;
    if (content === null) return `message ${i + 1} has "content": null; every message needs its text as a "content" string`;
    if (typeof content !== "string") return `message ${i + 1} has no "content" string`;
  }
  return null;
}

/**
 * Read samples in file order: JSON lines with "text" or "messages", or a .txt file with one
 * sample per blank-line-separated block. A malformed line is an error naming its line number; a
 * UTF-8 byte order mark at the start is skipped.
 */
export function readRawSamples(file: string): RawSample[] {
  let text = readRegularFile(file, MAX_DATASET_BYTES, asUsageError, "dataset").toString("utf8");
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (path.extname(file).toLowerCase() === ".txt") {
    return text.split(/\r?\n[ \t]*\r?\n/).map((t) => ({ text: t.trim() }));
  }
  const out: RawSample[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === "") return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (cause) {
      throw new UsageError(`dataset ${file}, line ${i + 1}: not valid JSON (${(cause as Error).message})`, { cause });
    }
    const rec = v as { text?: unknown; messages?: unknown } | null;
    if (rec && typeof rec === "object" && typeof rec.text === "string") out.push({ text: rec.text });
    else if (rec && typeof rec === "object" && rec.messages !== undefined) {
      const problem = messagesProblem(rec.messages);
      if (problem) throw new UsageError(`dataset ${file}, line ${i + 1}: ${problem}`);
      out.push({ messages: rec.messages as ChatMessage[] });
    } else throw new UsageError(`dataset ${file}, line ${i + 1}: expected an object with a "text" string or a "messages" list`);
  });
  return out;
}

export interface SampleOptions {
  /** keep at most this many usable samples (default: all) */
  numSamples?: number;
  /** truncate each sample to this many tokens, BOS included */
  maxSeqLength: number;
  /** shuffle with this seed before taking samples, as Hugging Face `Dataset.shuffle(seed)` does; null keeps file order */
  shuffleSeed?: Seed | null;
}

/**
 * A chat template compiled once on a worker thread; each rendering is waited for at most
 * CHAT_TEMPLATE_LIMITS.timeoutMs, then the worker is stopped and the template refused.
 */
class ChatRenderer {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));

  constructor(template: string) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(new URL("./chat-worker.js", import.meta.url), {
      workerData: { template, port: port2, flag: this.flag, maxChars: CHAT_TEMPLATE_LIMITS.maxChars },
      transferList: [port2],
      resourceLimits: { maxOldGenerationSizeMb: CHAT_TEMPLATE_LIMITS.maxHeapMb },
    });
    this.worker.unref();
  }

  render(vars: Record<string, unknown>, where: string): string {
    Atomics.store(this.flag, 0, 0);
    this.worker.postMessage(vars);
    if (Atomics.wait(this.flag, 0, 0, CHAT_TEMPLATE_LIMITS.timeoutMs) === "timed-out") {
      this.close();
      throw new UsageError(
        `${where}: the tokenizer's chat template did not finish within ${CHAT_TEMPLATE_LIMITS.timeoutMs / 1000} s (a runaway template); stopped`,
      );
    }
    const reply = receiveMessageOnPort(this.port)?.message as { text: string } | { error: string } | undefined;
    if (!reply) throw new UsageError(`${where}: the tokenizer's chat template stopped without an answer`);
    if ("error" in reply) throw new UsageError(`${where}: the tokenizer's chat template ${reply.error}`);
    return reply.text;
  }

  close(): void {
    void this.worker.terminate();
    this.port.close();
  }
}

function renderChat(renderer: ChatRenderer, tokenizer: LoadedTokenizer, messages: ChatMessage[], where: string): string {
  const rendered = renderer.render(
    { messages, bos_token: tokenizer.bosToken ?? "", eos_token: tokenizer.eosToken ?? "", add_generation_prompt: false },
    where,
  );
  // the tokenizer adds BOS itself
  const bos = tokenizer.bosToken ?? "";
  return bos && rendered.startsWith(bos) ? rendered.slice(bos.length) : rendered;
}

/** Tokens past the cut that a prefix must produce before its first `n` tokens are taken as the text's. */
const TRUNCATION_MARGIN = 64;

/**
 * The first `n` tokens of `text`, tokenizing only a prefix: a prefix long enough to yield `n`
 * tokens plus a margin (so the cut's effect on the tokens beside it never reaches the first
 * `n`), grown fourfold from 16 characters per token until it does. A 50 MB line costs about what
 * its first `n` tokens cost.
 */
export function encodeTruncated(tokenizer: LoadedTokenizer, text: string, n: number): number[] {
  let chars = 16 * (n + TRUNCATION_MARGIN);
  while (chars < text.length) {
    const cut = /[\uD800-\uDBFF]/.test(text[chars - 1] ?? "") ? chars - 1 : chars;
    const ids = tokenizer.encode(text.slice(0, cut));
    if (ids.length >= n + TRUNCATION_MARGIN) return ids.slice(0, n);
    chars *= 4;
  }
  return tokenizer.encode(text).slice(0, n);
}

/**
 * The tokens per sample a run uses: `requested`, else min(2048, max_position_embeddings); one
 * longer than the model's positions is refused (the model was never trained on them), by every
 * command alike.
 */
export function seqLengthFor(requested: number | undefined, maxPositions: number): number {
  const n = requested ?? Math.min(2048, maxPositions);
  if (n > maxPositions) throw new UsageError(`--max-seq-length ${n} exceeds the model's max_position_embeddings ${maxPositions}`);
  return n;
}

/**
 * Tokenized calibration samples: each sample alone (BOS + text), truncated to maxSeqLength;
 * samples with no text are skipped. No usable sample is an error.
 */
export function loadTokenizedSamples(file: string, tokenizer: LoadedTokenizer, options: SampleOptions): number[][] {
  if (typeof file !== "string") throw new UsageError(`loadTokenizedSamples: the dataset path must be a string, got ${typeof file}`);
  const opts = checkOptions("loadTokenizedSamples", SAMPLE_OPTIONS, options);
  if (!Number.isInteger(opts.maxSeqLength) || opts.maxSeqLength < 2)
    throw new UsageError(`max sequence length must be an integer >= 2, got ${opts.maxSeqLength}`);
  if (opts.numSamples !== undefined && (!Number.isInteger(opts.numSamples) || opts.numSamples < 1)) {
    throw new UsageError(`number of samples must be a positive integer, got ${opts.numSamples}`);
  }
  let raw = readRawSamples(file);
  if (opts.shuffleSeed !== undefined && opts.shuffleSeed !== null) raw = hfShuffled(raw, opts.shuffleSeed);
  let renderer: ChatRenderer | null = null;
  const out: number[][] = [];
  try {
    for (const [i, s] of raw.entries()) {
      if (opts.numSamples !== undefined && out.length >= opts.numSamples) break;
      let text: string;
      if ("text" in s) text = s.text;
      else {
        if (!tokenizer.chatTemplate) throw new UsageError(`dataset ${file}: has "messages" but the tokenizer has no chat_template`);
        renderer ??= new ChatRenderer(tokenizer.chatTemplate);
        text = renderChat(
          renderer,
          tokenizer,
          s.messages,
          `dataset ${file}, sample ${i + 1}${opts.shuffleSeed === null || opts.shuffleSeed === undefined ? "" : " (after shuffling)"}`,
        );
      }
      if (text.trim() === "") continue;
      out.push(encodeTruncated(tokenizer, text, opts.maxSeqLength));
    }
  } finally {
    renderer?.close();
  }
  if (out.length === 0) throw new UsageError(`dataset ${file}: no usable sample (${raw.length} records, all empty)`);
  return out;
}

import fs from "node:fs";
import path from "node:path";
import { Template } from "@huggingface/jinja";
import { UsageError } from "../errors.js";
import { LoadedTokenizer } from "../io/tokenizer.js";
import { hfShuffled } from "../util/numpy-random.js";

/** Largest dataset file read into memory. */
export const MAX_DATASET_BYTES = 2 * 1024 ** 3;

export interface ChatMessage {
  role: string;
  content: string;
}

/** A raw sample before tokenization: plain text, or chat messages to render with the template. */
export type RawSample = { text: string } | { messages: ChatMessage[] };

function isMessages(v: unknown): v is ChatMessage[] {
  return Array.isArray(v) && v.every((m) => typeof m === "object" && m !== null && typeof (m as ChatMessage).role === "string" && typeof (m as ChatMessage).content === "string");
}

/**
 * Read samples in file order: JSON lines with "text" or "messages", or a .txt file with one
 * sample per blank-line-separated block. A malformed line is an error naming its line number.
 */
export function readRawSamples(file: string): RawSample[] {
  if (!fs.existsSync(file)) throw new UsageError(`dataset ${file}: not found`);
  const size = fs.statSync(file).size;
  if (size > MAX_DATASET_BYTES) throw new UsageError(`dataset ${file}: ${size} bytes exceeds the limit of ${MAX_DATASET_BYTES}`);
  const text = fs.readFileSync(file, "utf8");
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
    if (rec && typeof rec.text === "string") out.push({ text: rec.text });
    else if (rec && isMessages(rec.messages)) out.push({ messages: rec.messages });
    else throw new UsageError(`dataset ${file}, line ${i + 1}: expected an object with a "text" string or a "messages" list`);
  });
  return out;
}

export interface SampleOptions {
  /** keep at most this many usable samples (default: all) */
  numSamples?: number;
  /** truncate each sample to this many tokens, BOS included */
  maxSeqLength: number;
  /** shuffle with this seed before taking samples, as Hugging Face `Dataset.shuffle(seed)` does; null keeps file order */
  shuffleSeed?: number | null;
}

function renderChat(tokenizer: LoadedTokenizer, messages: ChatMessage[], file: string): string {
  if (!tokenizer.chatTemplate) throw new UsageError(`dataset ${file}: has "messages" but the tokenizer has no chat_template`);
  const rendered = new Template(tokenizer.chatTemplate).render({
    messages,
    bos_token: tokenizer.bosToken ?? "",
    eos_token: tokenizer.eosToken ?? "",
    add_generation_prompt: false,
  });
  // the tokenizer adds BOS itself
  const bos = tokenizer.bosToken ?? "";
  return bos && rendered.startsWith(bos) ? rendered.slice(bos.length) : rendered;
}

/**
 * Tokenized calibration samples: each sample alone (BOS + text), truncated to maxSeqLength;
 * samples with no text are skipped. No usable sample is an error.
 */
export function loadTokenizedSamples(file: string, tokenizer: LoadedTokenizer, opts: SampleOptions): number[][] {
  if (!Number.isInteger(opts.maxSeqLength) || opts.maxSeqLength < 2) throw new UsageError(`max sequence length must be an integer >= 2, got ${opts.maxSeqLength}`);
  if (opts.numSamples !== undefined && (!Number.isInteger(opts.numSamples) || opts.numSamples < 1)) {
    throw new UsageError(`number of samples must be a positive integer, got ${opts.numSamples}`);
  }
  let raw = readRawSamples(file);
  if (opts.shuffleSeed !== undefined && opts.shuffleSeed !== null) raw = hfShuffled(raw, opts.shuffleSeed);
  const out: number[][] = [];
  for (const s of raw) {
    if (opts.numSamples !== undefined && out.length >= opts.numSamples) break;
    const text = "text" in s ? s.text : renderChat(tokenizer, s.messages, file);
    if (text.trim() === "") continue;
    out.push(tokenizer.encode(text).slice(0, opts.maxSeqLength));
  }
  if (out.length === 0) throw new UsageError(`dataset ${file}: no usable sample (${raw.length} records, all empty)`);
  return out;
}

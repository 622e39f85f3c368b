import fs from "node:fs";
import path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { CheckpointFormatError } from "../errors.js";

export const MAX_TOKENIZER_BYTES = 256 * 1024 * 1024;

export interface LoadedTokenizer {
  /** ids with the model's special tokens (BOS) prepended */
  encode(text: string): number[];
  decode(ids: number[]): string;
  bosTokenId: number | null;
  /** the chat template from tokenizer_config.json, if any */
  chatTemplate: string | null;
  config: Record<string, unknown>;
}

function readJson(file: string, limit: number): Record<string, unknown> {
  if (!fs.existsSync(file)) throw new CheckpointFormatError(`${file}: not found`);
  const size = fs.statSync(file).size;
  if (size > limit) throw new CheckpointFormatError(`${file}: ${size} bytes exceeds the limit of ${limit}`);
  try {
    const v: unknown = JSON.parse(fs.readFileSync(file, "utf8"));
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Record<string, unknown>;
  } catch (cause) {
    throw new CheckpointFormatError(`${file}: invalid JSON (${(cause as Error).message})`, { cause });
  }
}

/** Load tokenizer.json + tokenizer_config.json from a model folder (Hugging Face format). */
export function loadTokenizer(dir: string): LoadedTokenizer {
  const tj = readJson(path.join(dir, "tokenizer.json"), MAX_TOKENIZER_BYTES);
  const cfgPath = path.join(dir, "tokenizer_config.json");
  const cfg = fs.existsSync(cfgPath) ? readJson(cfgPath, MAX_TOKENIZER_BYTES) : {};
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tj, cfg);
  } catch (cause) {
    throw new CheckpointFormatError(`${path.join(dir, "tokenizer.json")}: cannot build the tokenizer (${(cause as Error).message})`, { cause });
  }
  const bos = typeof cfg.bos_token === "string" ? cfg.bos_token : null;
  const added = Array.isArray(tj.added_tokens) ? (tj.added_tokens as { id: number; content: string }[]) : [];
  const bosTokenId = bos ? (added.find((t) => t.content === bos)?.id ?? null) : null;
  return {
    encode: (text) => tok.encode(text, { add_special_tokens: true }).ids,
    decode: (ids) => tok.decode(ids, { skip_special_tokens: false }),
    bosTokenId,
    chatTemplate: typeof cfg.chat_template === "string" ? cfg.chat_template : null,
    config: cfg,
  };
}

import path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { CheckpointFormatError, asFormatError } from "../errors.js";
import { confinedFile, entryExists, readRegularFile } from "./files.js";
import { readJsonObject } from "./json.js";

export const MAX_TOKENIZER_BYTES = 256 * 1024 * 1024;

export interface LoadedTokenizer {
  /** ids with the model's special tokens (BOS) prepended */
  encode(text: string): number[];
  decode(ids: number[]): string;
  bosTokenId: number | null;
  /** the chat template: chat_template.jinja, else tokenizer_config.json's (its "default" if named) */
  chatTemplate: string | null;
  /** special tokens as text (tokenizer_config.json gives a string or an added-token object) */
  bosToken: string | null;
  eosToken: string | null;
  config: Record<string, unknown>;
}

/** A special token in tokenizer_config.json: "<s>" or { "content": "<s>", ... }. */
function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string")
    return (v as { content: string }).content;
  return null;
}

/**
 * The chat template as transformers resolves it: a `chat_template.jinja` file beside the tokenizer
 * (what transformers >= 4.5x saves) wins; else tokenizer_config.json's `chat_template`, a string
 * or a list of named templates of which "default" is used.
 */
function chatTemplateOf(dir: string, cfg: Record<string, unknown>): string | null {
  if (entryExists(path.join(dir, "chat_template.jinja"))) {
    return readRegularFile(
      confinedFile(dir, "chat_template.jinja", asFormatError),
      MAX_TOKENIZER_BYTES,
      asFormatError,
      "chat template",
    ).toString("utf8");
  }
  const t = cfg.chat_template;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const named = t.find(
      (x): x is { name: string; template: string } =>
        typeof x === "object" &&
        x !== null &&
        (x as { name?: unknown }).name === "default" &&
        typeof (x as { template?: unknown }).template === "string",
    );
    return named?.template ?? null;
  }
  return null;
}

/** Load tokenizer.json + tokenizer_config.json from a model folder (Hugging Face format). */
export function loadTokenizer(dir: string): LoadedTokenizer {
  const tj = readJsonObject(confinedFile(dir, "tokenizer.json", asFormatError), MAX_TOKENIZER_BYTES);
  const cfg = entryExists(path.join(dir, "tokenizer_config.json"))
    ? readJsonObject(confinedFile(dir, "tokenizer_config.json", asFormatError), MAX_TOKENIZER_BYTES)
    : {};
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tj, cfg);
  } catch (cause) {
    throw new CheckpointFormatError(`${path.join(dir, "tokenizer.json")}: cannot build the tokenizer (${(cause as Error).message})`, {
      cause,
    });
  }
  const bos = tokenText(cfg.bos_token);
  const added = Array.isArray(tj.added_tokens) ? (tj.added_tokens as { id: number; content: string }[]) : [];
  const bosTokenId = bos ? (added.find((t) => t.content === bos)?.id ?? null) : null;
  return {
    encode: (text) => tok.encode(text, { add_special_tokens: true }).ids,
    decode: (ids) => tok.decode(ids, { skip_special_tokens: false }),
    bosTokenId,
    chatTemplate: chatTemplateOf(dir, cfg),
    bosToken: bos,
    eosToken: tokenText(cfg.eos_token),
    config: cfg,
  };
}

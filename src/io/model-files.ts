/**
 * The files of a Hugging Face model folder, besides weights and config.json, that a converted
 * checkpoint must carry to load where the original loads: tokenizer files, generation config, and
 * the remote code (`trust_remote_code`) modules that `auto_map` names, with the modules they import
 * relatively (as transformers' `save_pretrained` copies them).
 */
import path from "node:path";
import { CheckpointFormatError, asFormatError } from "../errors.js";
import { checkRegular, confinedFile, entryExists, readRegularFile } from "./files.js";
import { readJsonObject } from "./json.js";
import { MAX_TOKENIZER_BYTES } from "./tokenizer.js";

/** Copied when present. */
export const COMPANION_FILES: readonly string[] = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "chat_template.jinja",
  "tokenizer.model",
  "vocab.json",
  "merges.txt",
  "generation_config.json",
];

export const MODEL_FILE_LIMITS = {
  /** a remote code module read to follow its relative imports */
  maxCodeFileBytes: 16 * 1024 * 1024,
  /** remote code modules followed in all */
  maxCodeFiles: 64,
  /** a tokenizer file, chat template or generation config copied to the output */
  maxCompanionBytes: MAX_TOKENIZER_BYTES,
} as const;

/** Module names in an auto_map: "configuration_afmoe.AfmoeConfig" -> "configuration_afmoe"; other repos' code ("org/repo--module.Class") is not ours to copy. */
function autoMapModules(autoMap: unknown): string[] {
  if (typeof autoMap !== "object" || autoMap === null) return [];
  const refs = Object.values(autoMap as Record<string, unknown>).flatMap((v) => (Array.isArray(v) ? v : [v]));
  return refs
    .filter((r): r is string => typeof r === "string" && !r.includes("--") && r.includes("."))
    .map((r) => r.slice(0, r.lastIndexOf(".")));
}

export interface ModelFiles {
  /** file names (relative to the model folder) to copy */
  files: string[];
  /** remote code modules named by auto_map or imported by one, but not in the folder */
  missing: string[];
}

/** What to copy from `dir` beside the converted weights and config.json (each checked: a regular file inside the model folder, within its size limit). */
export function modelFiles(dir: string, config: Record<string, unknown>): ModelFiles {
  const files = COMPANION_FILES.filter((f) => entryExists(path.join(dir, f)));
  for (const f of files)
    checkRegular(confinedFile(dir, f, asFormatError), MODEL_FILE_LIMITS.maxCompanionBytes, asFormatError, "companion file");
  const tokenizerConfig = files.includes("tokenizer_config.json")
    ? readJsonObject(confinedFile(dir, "tokenizer_config.json", asFormatError), MAX_TOKENIZER_BYTES)
    : null;
  const queue = [...autoMapModules(config.auto_map), ...autoMapModules(tokenizerConfig?.auto_map)];
  const seen = new Set<string>();
  const missing: string[] = [];
  while (queue.length) {
    const mod = queue.shift() as string;
    if (seen.has(mod)) continue;
    seen.add(mod);
    if (seen.size > MODEL_FILE_LIMITS.maxCodeFiles)
      throw new CheckpointFormatError(`${dir}: remote code imports more than ${MODEL_FILE_LIMITS.maxCodeFiles} modules`);
    if (!/^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$/.test(mod))
      throw new CheckpointFormatError(
        `${dir}: auto_map names the module ${JSON.stringify(mod.slice(0, 80))}, which is not a Python module name`,
      );
    const rel = `${mod.split(".").join("/")}.py`;
    if (!entryExists(path.join(dir, rel))) {
      missing.push(rel);
      continue;
    }
    const code = readRegularFile(
      confinedFile(dir, rel, asFormatError),
      MODEL_FILE_LIMITS.maxCodeFileBytes,
      asFormatError,
      "remote code module",
    );
    files.push(rel);
    const pkg = mod.includes(".") ? `${mod.slice(0, mod.lastIndexOf("."))}.` : "";
    for (const m of code.toString("utf8").matchAll(/^\s*from\s+\.([A-Za-z_][\w.]*)\s+import\b/gm)) queue.push(`${pkg}${m[1] as string}`);
  }
  return { files, missing };
}

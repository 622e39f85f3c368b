import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Package root (this file compiles to dist/src/paths.js). */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The bundled tiny AFMoE checkpoint, the default --model. */
export const BUNDLED_MODEL = path.join(PACKAGE_ROOT, "models", "tiny-afmoe");
/** The bundled prose calibration set, the default --dataset. */
export const BUNDLED_DATASET = path.join(PACKAGE_ROOT, "data", "calib-prose.jsonl");
/** moecal's version, from package.json (its one source). */
export const MOECAL_VERSION: string = (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")) as { version: string })
  .version;

/**
 * The recipe a run's options give: `recipe` (an llm-compressor recipe file), or `scheme` and
 * `method` (SCHEME / PATTERN=SCHEME, METHOD / PATTERN=METHOD) with `groupSize` and `actorder`.
 */
import { UsageError } from "../errors.js";
import { readRecipeFile } from "../quantization/recipe-file.js";
import { type Recipe, parseRecipe, schemeValues } from "../quantization/recipe.js";
import type { OneshotOptions } from "./oneshot.js";

/** Options a recipe file gives itself: refused beside `recipe`, not silently overridden. */
const IN_THE_FILE = ["scheme", "method", "groupSize", "actorder", "dampening"] as const;

export function recipeOf(opts: OneshotOptions): Recipe {
  if (opts.recipe !== undefined) {
    const clash = IN_THE_FILE.filter((k) => opts[k] !== undefined);
    if (clash.length)
      throw new UsageError(
        `the recipe file ${opts.recipe} gives the schemes, methods and GPTQ settings; do not pass ${clash.join(", ")} beside it`,
      );
    return readRecipeFile(opts.recipe);
  }
  return parseRecipe(schemeValues(opts.scheme), { groupSize: opts.groupSize, actorder: opts.actorder }, schemeValues(opts.method));
}

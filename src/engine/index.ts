import type { Engine } from "./engine.js";
import { OrtEngine } from "./ort.js";

export * from "./engine.js";
export * from "./tensor.js";
export * from "./dtype.js";
export * from "./ops.js";
export { OrtEngine, engineThreads } from "./ort.js";
export { ReferenceEngine } from "./reference.js";

let current: Engine | undefined;

/** The engine used by models and quantizers (onnxruntime unless set otherwise). */
export function getEngine(): Engine {
  if (!current) current = new OrtEngine();
  return current;
}

export function setEngine(engine: Engine): void {
  current = engine;
}

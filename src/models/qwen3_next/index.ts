export * from "./config.js";
export * from "./gated-deltanet.js";
export * from "./modeling.js";
export * from "./quant-defaults.js";
export * from "./family.js";

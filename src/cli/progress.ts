import type { ProgressEvent } from "../pipeline/oneshot.js";

/**
 * Renders oneshot progress: redrawn bars (layers; samples within a layer) on a terminal,
 * one plain line per layer otherwise.
 */
export function progressPrinter(stream: NodeJS.WriteStream): (e: ProgressEvent) => void {
  const tty = stream.isTTY === true;
  let layers = 0;
  let layer = 0;
  const bar = (done: number, total: number, width = 24): string => {
    const n = Math.round((done / Math.max(1, total)) * width);
    return `[${"#".repeat(n)}${".".repeat(width - n)}]`;
  };
  return (e) => {
    switch (e.kind) {
      case "start":
        layers = e.layers;
        stream.write(`calibrating on ${e.samples} samples (${e.tokens} tokens), ${e.layers} layers\n`);
        break;
      case "layer":
        layer = e.layer;
        if (!tty) stream.write(`layer ${e.layer + 1}/${layers}\n`);
        break;
      case "samples":
        if (tty) {
          stream.write(
            `\r\x1b[2Klayers ${bar(layer, layers, 12)} ${layer + 1}/${layers}  ${e.phase.padEnd(9)} ${bar(e.done, e.total)} ${e.done}/${e.total}`,
          );
        }
        break;
      case "layer-done": {
        const s = e.summary;
        const routed = s.min_routed === null ? "dense" : `routed min/median ${s.min_routed}/${s.median_routed}`;
        const line = `layer ${s.layer}: ${s.quantized_linears} Linear quantized, ${routed}, fallbacks ${s.fallbacks}`;
        stream.write(tty ? `\r\x1b[2K${line}\n` : `  ${line}\n`);
        break;
      }
    }
  };
}

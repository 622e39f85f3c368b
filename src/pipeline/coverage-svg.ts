import * as vega from "vega";
import * as vl from "vega-lite";
import type { LayerCoverage } from "../calibration/coverage.js";

/**
 * A heatmap (layers x experts) of tokens routed to each expert, drawn with Vega-Lite; cells
 * under `threshold` tokens are outlined in red and marked with an "x".
 */
export async function coverageSvg(layers: Record<string, LayerCoverage>, opts: { threshold: number; title?: string }): Promise<string> {
  const values = Object.entries(layers).flatMap(([layer, c]) =>
    c.routed.map((routed, expert) => ({
      layer: Number(layer),
      expert,
      routed,
      seen: c.seen[expert] ?? 0,
      starved: routed < opts.threshold,
    })),
  );
  const spec: vl.TopLevelSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: opts.title ?? `Tokens routed to each expert (outlined: fewer than ${opts.threshold})`,
    data: { values },
    width: { step: 18 },
    height: { step: 18 },
    encoding: {
      x: { field: "expert", type: "ordinal", title: "expert" },
      y: { field: "layer", type: "ordinal", title: "layer" },
    },
    layer: [
      {
        mark: { type: "rect", strokeWidth: 2 },
        encoding: {
          color: { field: "routed", type: "quantitative", scale: { scheme: "viridis" }, title: "routed tokens" },
          stroke: { condition: { test: "datum.starved", value: "red" }, value: null },
          tooltip: [{ field: "layer" }, { field: "expert" }, { field: "routed" }, { field: "seen" }],
        },
      },
      {
        transform: [{ filter: "datum.starved" }],
        mark: { type: "text", text: "x", color: "red", fontWeight: "bold" },
      },
    ],
  };
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  // vega numbers gradients by a counter global to the process: number them per picture, so that
  // the same coverage gives the same bytes however many pictures the process drew before
  const ids = new Map<string, string>();
  return svg.replace(/gradient_\d+/g, (id) => {
    if (!ids.has(id)) ids.set(id, `gradient_${ids.size}`);
    return ids.get(id) as string;
  });
}

/**
 * `npm run bench:oneshot -- expert_groups` (and part of a plain `npm run bench:oneshot`): an MoE
 * layer with many experts (H 2048, 384 experts top-8, Im 512: 2.4 GB of BF16 expert weights; 16
 * attention heads of 128), then a small dense layer (so that the MoE layer propagates, as any but
 * the last does), run with `--max-memory 3G` in the expert groups the plan picks, against the same
 * model run whole with enough memory, each as its own process: peak RSS (under the limit?), seconds
 * (the grouped run's over the whole one's), the plan's group size and peak memory against what
 * happened, and whether the two outputs are the same bytes; then the plan of a DeepSeek-V3 and a
 * Kimi-K2 layer (bench/layer-projection.ts). Merges the result into bench/results.json (`expert_groups`).
 */
import fs from "node:fs";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { MoecalError } from "../src/errors.js";
import { PACKAGE_ROOT } from "../src/paths.js";
import { type EndToEnd, cli, measure, nanoSetup } from "./plan.js";
import { type LayerProjection, projectLayers } from "./layer-projection.js";

const LIMIT = "3G";
const LIMIT_MB = 3 * 1024;

export interface ExpertGroupsBench {
  limit_mb: number;
  grouped: EndToEnd;
  whole: EndToEnd;
  /** grouped seconds / whole seconds (goal: at most 1.15) */
  seconds_ratio: number;
  /** the grouped run's peak RSS under the limit */
  under_limit: boolean;
  /** every output file byte-identical */
  same_bytes: boolean;
  /** the plan of one DeepSeek-V3 and one Kimi-K2 layer */
  projections: LayerProjection[];
}

/** The model in `work`: an MoE layer of 384 experts, then a dense one. */
function setup(work: string): string {
  const model = path.join(work, "experts-384");
  const fields: Record<string, number | string> = {
    mlp_only_layers: "[1]",
    hidden_size: 2048,
    num_experts: 384,
    num_experts_per_tok: 8,
    moe_intermediate_size: 512,
    intermediate_size: 2048,
    num_attention_heads: 16,
    num_key_value_heads: 4,
    head_dim: 128,
    max_position_embeddings: 2048,
  };
  const set = Object.entries(fields).flatMap(([k, v]) => ["--set", `${k}=${v}`]);
  const gen = spawnSync(process.execPath, [cli, "random-model", "--output", model, "--family", "qwen3_moe", "--layers", "2", ...set], {
    encoding: "utf8",
  });
  if (gen.status !== 0) throw new MoecalError("E_BENCH", `random-model failed: ${gen.stderr}`);
  return model;
}

function sameFiles(a: string, b: string): boolean {
  const names = fs.readdirSync(a).sort();
  if (names.join("\n") !== fs.readdirSync(b).sort().join("\n")) return false;
  return names.every((f) => fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))));
}

export async function benchExpertGroups(work: string, log: (s: string) => void): Promise<ExpertGroupsBench> {
  const { data } = nanoSetup(work, { model: false });
  log("expert_groups: an MoE layer of 384 experts (2.4 GB of BF16 weights) and a dense layer");
  const model = setup(work);
  const args = ["--dataset", data, "--num-samples", "8", "--max-seq-length", "512"];
  const out = (n: string): string => path.join(work, `experts-384-${n}`);
  log(`expert_groups: oneshot with --max-memory ${LIMIT} (minutes)`);
  const grouped = measure("experts_384_grouped", model, [...args, "--max-memory", LIMIT], out("grouped"));
  log("expert_groups: oneshot of the layer whole (minutes)");
  const whole = measure("experts_384_whole", model, [...args, "--max-memory", "20G"], out("whole"));
  const same = sameFiles(out("grouped"), out("whole"));
  for (const n of ["grouped", "whole"]) fs.rmSync(out(n), { recursive: true, force: true });
  fs.rmSync(model, { recursive: true, force: true });
  log("expert_groups: the plan of a DeepSeek-V3 and a Kimi-K2 layer");
  const projections = await projectLayers(work, data, 64, 512, [16, 32, 64]);
  return {
    limit_mb: LIMIT_MB,
    grouped,
    whole,
    seconds_ratio: grouped.seconds / whole.seconds,
    under_limit: grouped.peak_rss_mb <= LIMIT_MB,
    same_bytes: same,
    projections,
  };
}

/** Record the result in bench/results.json (`expert_groups`). */
export function recordExpertGroups(r: ExpertGroupsBench): void {
  const file = path.join(PACKAGE_ROOT, "bench", "results.json");
  const base = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>) : {};
  fs.writeFileSync(file, `${JSON.stringify({ ...base, expert_groups: { date: new Date().toISOString(), ...r } }, null, 2)}\n`);
}

/** Markdown rows of the result. */
export function expertGroupsRows(r: ExpertGroupsBench): string[] {
  const row = (e: EndToEnd, what: string): string =>
    `| ${what} | ${e.seconds.toFixed(1)} s | ${e.peak_rss_mb.toFixed(0)} MB | ${e.planned.peak_memory_mb.toFixed(0)} MB | ${e.planned.expert_group_size ?? "whole"} |`;
  return [
    "| 384 experts: an MoE layer, a dense layer | time | peak RSS | planned peak | expert group size |",
    "|---|---|---|---|---|",
    row(r.grouped, `--max-memory ${LIMIT}`),
    row(r.whole, "whole layer"),
    `grouped / whole seconds ${r.seconds_ratio.toFixed(2)}; peak RSS under ${LIMIT}: ${r.under_limit}; same bytes: ${r.same_bytes}`,
    "",
    "| one layer, planned | whole: peak (weights, Hessians) | router-aware statistics, whole | groups under 16 / 32 / 64 GiB: size, peak |",
    "|---|---|---|---|",
    ...r.projections.map(
      (p) =>
        `| ${p.model} (${p.experts} experts, FP8 source, ${p.tokens} tokens) | ${p.whole.peak.toFixed(1)} GiB (${p.whole.parameters.toFixed(1)}, ${p.whole.hessians.toFixed(1)}) | ${p.router_aware_whole_peak.toFixed(1)} GiB | ${p.grouped.map((g) => `${g.size}: ${g.peak.toFixed(1)} GiB`).join(" / ")} |`,
    ),
  ];
}

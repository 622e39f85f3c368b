/**
 * Router-aware expert statistics. Calibrating every expert on every token gives a token the
 * router never sends to expert e the same weight in e's GPTQ Hessian as one it does send there;
 * at inference e sees only its routed tokens, scaled by the router's combine weight. These
 * settings weight an expert's rows by how the router uses them:
 * - `uniform`: every row weight 1 (the seed's statistics);
 * - `unrouted:ALPHA`: rows of tokens not routed to the expert weigh ALPHA;
 * - `shrink:K`: the routed statistic shrunk toward the all-token one by K pseudo-rows,
 *   (n_e Ĥ_routed + K Ĥ_all) / (n_e + K), Ĥ row-normalised, n_e the expert's routed rows;
 * and routed rows weigh 1, the combine weight (`score`) or its square (`score2`).
 * An expert with no routed row keeps its all-token statistic.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { getEngine } from "../engine/index.js";
import { Tensor } from "../engine/tensor.js";
import { NumericalError, UsageError } from "../errors.js";
import { GramAccumulator } from "./gram.js";

export type ExpertStatistics = { kind: "uniform" } | { kind: "unrouted"; alpha: number } | { kind: "shrink"; k: number };
export type RoutedWeight = "one" | "score" | "score2";
export const ROUTED_WEIGHTS: readonly RoutedWeight[] = ["one", "score", "score2"];

export interface ExpertStatisticsOptions {
  statistics: ExpertStatistics;
  routedWeight: RoutedWeight;
}

/** The seed's statistics: every row of every expert weight 1. */
export const SEED_STATISTICS: ExpertStatisticsOptions = { statistics: { kind: "uniform" }, routedWeight: "one" };

/** What oneshot uses unless told otherwise (docs/expert-statistics.md says why). */
export const DEFAULT_STATISTICS: ExpertStatisticsOptions = SEED_STATISTICS;

/** Parse `uniform`, `unrouted:ALPHA` (0 <= ALPHA <= 1) or `shrink:K` (K > 0 tokens). */
export function parseExpertStatistics(text: string): ExpertStatistics {
  const bad = (why: string): UsageError =>
    new UsageError(`--expert-statistics "${text}": ${why} (uniform, unrouted:ALPHA with 0 <= ALPHA <= 1, or shrink:K with K > 0)`);
  if (text === "uniform") return { kind: "uniform" };
  const m = /^(unrouted|shrink):(.+)$/.exec(text);
  if (!m) throw bad("unknown setting");
  const v = Number(m[2]);
  if (!/^[0-9.eE+-]+$/.test(m[2] as string) || !Number.isFinite(v)) throw bad("not a number");
  if (m[1] === "unrouted") {
    if (v < 0 || v > 1) throw bad("ALPHA out of range");
    return { kind: "unrouted", alpha: v };
  }
  if (!(v > 0)) throw bad("K must be positive");
  return { kind: "shrink", k: v };
}

export function parseRoutedWeight(text: string): RoutedWeight {
  if ((ROUTED_WEIGHTS as readonly string[]).includes(text)) return text as RoutedWeight;
  throw new UsageError(`--routed-weight "${text}": expected one of ${ROUTED_WEIGHTS.join(", ")}`);
}

export function formatExpertStatistics(s: ExpertStatistics): string {
  return s.kind === "uniform" ? "uniform" : s.kind === "unrouted" ? `unrouted:${s.alpha}` : `shrink:${s.k}`;
}

/** True when the setting needs routed rows kept apart (anything but the seed's statistics). */
export function isRouterAware(o: ExpertStatisticsOptions): boolean {
  return o.statistics.kind !== "uniform" || o.routedWeight !== "one";
}

/** Which rows of an expert's input batch are routed to it, with their combine weights. */
export interface RowRouting {
  /** row indices into the expert's input batch */
  rows: Int32Array;
  /** the router's combine weight of each of those rows */
  weights: Float32Array;
}

const rowRouting = new AsyncLocalStorage<RowRouting>();

/** Run an expert call with its routed rows known to the observers of its Linears. */
export function withRowRouting<T>(routing: RowRouting, fn: () => Promise<T>): Promise<T> {
  return rowRouting.run(routing, fn);
}

/** The routing of the expert call in progress, if any. */
export function currentRowRouting(): RowRouting | undefined {
  return rowRouting.getStore();
}

/**
 * The routed rows of one Linear (or of gate and up together, which read the same rows): their
 * Gram sum weighted by the routed weight, the unweighted one when the weights are not all one,
 * their count and their summed weights.
 */
export class RoutedGram {
  readonly weighted: GramAccumulator;
  readonly plain: GramAccumulator | null;
  weightSum = 0;
  /** the last combined Hessian, for every Linear sharing this accumulator and the same all-token part */
  cache: { base: Float32Array; rows: number; H: Float32Array } | null = null;

  constructor(
    readonly inFeatures: number,
    readonly routedWeight: RoutedWeight,
  ) {
    this.weighted = new GramAccumulator(inFeatures);
    this.plain = routedWeight === "one" ? null : new GramAccumulator(inFeatures);
  }

  get rows(): number {
    return this.weighted.rows;
  }

  /** Add rows `routing.rows` of x [N, in], each weighted by its routed weight. */
  async addRows(x: Tensor, routing: RowRouting): Promise<void> {
    const n = routing.rows.length;
    if (n === 0) return;
    const d = this.inFeatures;
    const plain = new Float32Array(n * d);
    const scaled = this.plain ? new Float32Array(n * d) : plain;
    for (let i = 0; i < n; i++) {
      const r = routing.rows[i] as number;
      const src = x.data.subarray(r * d, (r + 1) * d);
      plain.set(src, i * d);
      const w = routing.weights[i] as number;
      if (!(w >= 0) || !Number.isFinite(w)) throw new NumericalError(`router combine weight ${w} is not a finite non-negative number`);
      const rw = this.routedWeight === "one" ? 1 : this.routedWeight === "score" ? w : w * w;
      this.weightSum += rw;
      if (this.plain) {
        const s = Math.sqrt(rw);
        for (let j = 0; j < d; j++) scaled[i * d + j] = (src[j] as number) * s;
      }
    }
    const engine = getEngine();
    this.weighted.addGram((await engine.gram(new Tensor(scaled, [n, d]))).data, n);
    if (this.plain) this.plain.addGram((await engine.gram(new Tensor(plain, [n, d]))).data, n);
  }

  /**
   * The expert's Hessian from its all-token Hessian `base` (2 x the Gram sum over `rows` rows)
   * and these routed rows; `base` itself when the expert has no routed row.
   */
  combine(base: Float32Array, rows: number, s: ExpertStatistics): Float32Array {
    if (this.rows === 0) return base;
    if (this.cache && this.cache.base === base && this.cache.rows === rows) return this.cache.H;
    const Gw = this.weighted.G;
    const G1 = (this.plain ?? this.weighted).G;
    const H = new Float32Array(base.length);
    if (s.kind === "shrink") {
      const ne = this.rows;
      const a = ne / (ne + s.k) / this.weightSum;
      const b = s.k / (ne + s.k) / rows;
      for (let i = 0; i < H.length; i++) H[i] = 2 * a * (Gw[i] as number) + b * (base[i] as number);
    } else {
      // every row weight 1 but the unrouted ones (alpha), routed ones re-weighted: alpha all + (w - alpha) routed
      const alpha = s.kind === "unrouted" ? s.alpha : 1;
      for (let i = 0; i < H.length; i++) H[i] = alpha * (base[i] as number) + 2 * ((Gw[i] as number) - alpha * (G1[i] as number));
    }
    this.cache = { base, rows, H };
    return H;
  }
}

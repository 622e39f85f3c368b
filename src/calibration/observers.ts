import type { Tensor } from "../engine/tensor.js";
import type { AnyModule } from "../nn/module.js";
import { Linear } from "../nn/layers.js";
import { type ExpertStatisticsOptions, RoutedGram, SEED_STATISTICS, currentRowRouting, isRouterAware } from "./expert-statistics.js";
import { GramAccumulator, LatestInputGram } from "./gram.js";
import { registerFastAwareHook } from "./fast-observers.js";

/**
 * GPTQ statistics of one Linear: H = sum over its input rows x of 2 x x^T (float32), and the
 * row count. Rows may come through its own hook, or from an accumulator shared with other
 * Linears that saw exactly the same rows (the all-experts fast path: every expert's gate and up
 * projection read the same tokens). When all rows are shared, `H` is the shared array itself.
 * With router-aware statistics an expert Linear also keeps its routed rows apart (its own
 * RoutedGram, or one shared by gate and up on the fast path) and `H` combines the two.
 */
export class HessianStats {
  /** rows through the Linear's own hook; created on first use (the fast path's gate/up projections never need one: 2E x in^2 floats) */
  private ownAcc: GramAccumulator | null = null;
  /** the sum of the shards of own rows ended so far (endShard), each added whole; null: none ended */
  private ended: GramAccumulator | null = null;
  private readonly shared = new Set<GramAccumulator>();
  private cache: { H: Float32Array; rows: number } | null = null;
  /** routed rows of an expert Linear (router-aware statistics only) */
  private routedAcc: RoutedGram | null = null;

  constructor(
    readonly inFeatures: number,
    readonly statistics: ExpertStatisticsOptions = SEED_STATISTICS,
  ) {}

  get own(): GramAccumulator {
    this.ownAcc ??= new GramAccumulator(this.inFeatures);
    return this.ownAcc;
  }

  /** this Linear's own routed rows (created on first use) */
  get ownRouted(): RoutedGram {
    this.routedAcc ??= new RoutedGram(this.inFeatures, this.statistics.routedWeight);
    return this.routedAcc;
  }

  /**
   * End a shard of this Linear's own rows: their sum is added, whole, to the sum of the shards before
   * it. A run sums the non-expert Linears' rows shard by shard, so that shards summed by other
   * processes (a distributed run's token-shard jobs) add up to the same bits, in shard order.
   */
  endShard(): void {
    const part = this.ownAcc;
    if (!part || part.rows === 0) return;
    if (!this.ended) {
      this.ended = part;
      this.ownAcc = null;
    } else {
      this.ended.addGram(part.G, part.rows);
      part.G.fill(0);
      part.rows = 0;
    }
    this.cache = null;
  }

  shareWith(acc: GramAccumulator): void {
    this.shared.add(acc);
    this.cache = null;
  }

  shareRouted(acc: RoutedGram): void {
    this.routedAcc = acc;
  }

  get rows(): number {
    let n = (this.ownAcc?.rows ?? 0) + (this.ended?.rows ?? 0);
    for (const s of this.shared) n += s.rows;
    return n;
  }

  /** Routed rows (null: not an expert Linear, or the seed's statistics). */
  get routedRows(): number | null {
    return this.routedAcc ? this.routedAcc.rows : null;
  }

  /** An expert Linear with rows but none routed to it: its Hessian is the all-token one. */
  get allTokenFallback(): boolean {
    return this.routedAcc !== null && this.routedAcc.rows === 0 && this.rows > 0;
  }

  /** The Hessian: 2 x the Gram sums, combined with the routed rows for router-aware statistics. */
  get H(): Float32Array {
    const base = this.allTokenH();
    return this.routesH() ? (this.routedAcc as RoutedGram).combine(base, this.rows, this.statistics.statistics) : base;
  }

  /** Whether `H` combines the all-token Hessian with routed rows (else it is the all-token one). */
  private routesH(): boolean {
    return this.routedAcc !== null && this.routedAcc.rows > 0 && this.rows > 0;
  }

  /** The sum of the own rows, every shard ended (a token-shard job's result, which another process adds to its own). */
  ownSum(): GramAccumulator | null {
    this.endShard();
    if (this.ended) {
      this.ownAcc = this.ended;
      this.ended = null;
    }
    return this.ownAcc;
  }

  /**
   * What `H` is made of, without making it: Linears whose `H` is one array have one key (the
   * accumulator they share, or the routed rows they share), so that GPTQ can group them before any
   * Hessian is made (quantize-layer.ts checks that a group's arrays are one).
   */
  hessianKey(): object {
    if (this.routesH()) return this.routedAcc as RoutedGram;
    return onlyShared(this.allTokenParts(), this.ownAcc) ?? this;
  }

  /** The Gram sums with rows that make the all-token Hessian (the shard open now ends: own rows are the ended shards' sum from here on). */
  private allTokenParts(): GramAccumulator[] {
    this.ownSum();
    return [...(this.ownAcc ? [this.ownAcc] : []), ...this.shared].filter((a) => a.rows > 0);
  }

  /**
   * `H`'s values in a new array that nothing here keeps (a GPTQ job moves it to its worker): the
   * all-token Hessian made from the sums straight into it, rather than made, kept and copied.
   */
  takeH(): Float32Array {
    return this.routesH() ? this.H.slice() : allTokenSum(this.allTokenParts(), this.ownAcc, this.inFeatures);
  }

  /** 2 x (own + shared Gram sums); the same array object for every Linear sharing one accumulator only. */
  private allTokenH(): Float32Array {
    const parts = this.allTokenParts();
    const rows = this.rows;
    if (this.cache && this.cache.rows === rows) return this.cache.H;
    const one = onlyShared(parts, this.ownAcc);
    const H = one ? doubledView(one) : allTokenSum(parts, this.ownAcc, this.inFeatures);
    this.cache = { H, rows };
    return H;
  }
}

/** The one part when it is a shared sum (not `own`): the Hessian is then that sum's doubled copy, one for every Linear sharing it. */
function onlyShared(parts: readonly GramAccumulator[], own: GramAccumulator | null): GramAccumulator | null {
  return parts.length === 1 && parts[0] !== own ? (parts[0] as GramAccumulator) : null;
}

/** 2 x the sum of `parts` in a new array (a shared sum alone: 2 x its values, as doubledView makes them). */
function allTokenSum(parts: readonly GramAccumulator[], own: GramAccumulator | null, inFeatures: number): Float32Array {
  const H = new Float32Array(inFeatures * inFeatures);
  const one = onlyShared(parts, own);
  if (one) {
    const G = one.G;
    for (let i = 0; i < G.length; i++) H[i] = 2 * (G[i] as number);
  } else for (const p of parts) for (let i = 0; i < H.length; i++) H[i] = (H[i] as number) + 2 * (p.G[i] as number);
  return H;
}

/** One doubled copy per accumulator and row count, shared by every Linear that reads it. */
const doubled = new WeakMap<GramAccumulator, { rows: number; H: Float32Array }>();
function doubledView(acc: GramAccumulator): Float32Array {
  const d = doubled.get(acc);
  if (d && d.rows === acc.rows) return d.H;
  const H = allTokenSum([acc], null, acc.inFeatures);
  doubled.set(acc, { rows: acc.rows, H });
  return H;
}

export interface HessianObservers {
  stats: Map<string, HessianStats>;
  /** end the current shard of the own rows of every observed Linear `sharded` names (HessianStats.endShard) */
  endShard(sharded: (name: string) => boolean): void;
  /** remove every hook */
  remove(): void;
}

/**
 * Observe every Linear of `root` whose dotted name passes `filter`: its input statistics for
 * GPTQ. Hooks stay with the Linear objects, so they keep observing while an MoE block is
 * swapped for its calibration module, whose fast path feeds them directly.
 */
export function attachHessianObservers(
  root: AnyModule,
  filter: (name: string, module: Linear) => boolean,
  prefix = "",
  statistics: ExpertStatisticsOptions = SEED_STATISTICS,
): HessianObservers {
  const stats = new Map<string, HessianStats>();
  const removers: (() => void)[] = [];
  const routerAware = isRouterAware(statistics);
  // Linears reading the same tensor one after another (q/k/v, gate/up) share its Gram product
  const latest = new LatestInputGram();
  for (const [name, m] of root.namedModules(prefix)) {
    if (!(m instanceof Linear) || !filter(name, m)) continue;
    const s = new HessianStats(m.inFeatures, statistics);
    stats.set(name, s);
    const hook = async (x: Tensor): Promise<void> => {
      await latest.addTo(s.own, x);
      // inside an expert call of a calibration module: its routed rows are known
      const routing = routerAware ? currentRowRouting() : undefined;
      if (routing) await s.ownRouted.addRows(x, routing);
    };
    removers.push(
      registerFastAwareHook(m, hook, {
        wantsGram: true,
        routedWeight: routerAware ? statistics.routedWeight : null,
        rows: () => undefined,
        own: () => s.own,
        shareWith: (acc) => s.shareWith(acc),
        shareRouted: (acc) => s.shareRouted(acc),
      }),
    );
  }
  return {
    stats,
    endShard: (sharded) => {
      for (const [n, s] of stats) if (sharded(n)) s.endShard();
    },
    remove: () => {
      for (const r of removers) r();
    },
  };
}

/** Largest |x| over the input rows of a Linear, with the row count (static activation scales). */
export interface InputAbsMax {
  absmax: number;
  rows: number;
}

/**
 * Hooks recording each Linear's largest input magnitude (FP8's static `input_scale`, NVFP4's input
 * global scale); the all-experts fast path feeds them the same rows, so they keep it on. `remove`
 * detaches them.
 */
export function attachInputAbsMax(linears: ReadonlyMap<string, Linear>): { stats: Map<string, InputAbsMax>; remove(): void } {
  const stats = new Map<string, InputAbsMax>();
  const removers: (() => void)[] = [];
  for (const [n, lin] of linears) {
    const s: InputAbsMax = { absmax: 0, rows: 0 };
    stats.set(n, s);
    const observe = (x: Tensor): void => {
      const d = x.data;
      let m = s.absmax;
      for (let i = 0; i < d.length; i++) m = Math.max(m, Math.abs(d[i] as number));
      s.absmax = m;
      s.rows += x.size / lin.inFeatures;
    };
    removers.push(
      registerFastAwareHook(lin, observe, {
        wantsGram: false,
        routedWeight: null,
        rows: () => undefined,
        shareWith: () => undefined,
        shareRouted: () => undefined,
        values: observe,
      }),
    );
  }
  return {
    stats,
    remove: () => {
      for (const r of removers) r();
    },
  };
}

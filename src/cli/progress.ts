import cliProgress from "cli-progress";
import type { ProgressEvent } from "../pipeline/oneshot.js";
import { planSummary } from "../pipeline/plan-report.js";

/** Seconds as "1h02m", "3m05s" or "42s". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/**
 * The run's time so far and what is left: the mean time of the layers measured in this run times
 * the layers left, less the time the current layer has run; before a layer has finished, the
 * plan's times of the layers left (null without a plan).
 */
export class LayerClock {
  private readonly times: number[] = [];
  private layerStart: number;
  readonly started: number;

  constructor(private readonly now: () => number = Date.now) {
    this.started = now();
    this.layerStart = this.started;
  }

  layerBegins(): void {
    this.layerStart = this.now();
  }

  layerEnds(): void {
    this.times.push((this.now() - this.layerStart) / 1000);
    this.layerStart = this.now();
  }

  elapsed(): number {
    return (this.now() - this.started) / 1000;
  }

  /** the plan's seconds per layer, the ETA's basis until a layer has been measured */
  planned: number[] | null = null;

  /** seconds left with `left` layers to go including the current one */
  eta(left: number): number | null {
    if (this.times.length === 0) {
      if (!this.planned) return null;
      const rest = this.planned.slice(this.planned.length - left).reduce((a, b) => a + b, 0);
      return Math.max(0, rest - (this.now() - this.layerStart) / 1000);
    }
    const mean = this.times.reduce((a, b) => a + b, 0) / this.times.length;
    return Math.max(0, mean * left - (this.now() - this.layerStart) / 1000);
  }

  /** tokens per second of the current layer's phase, from `tokens` done since `since` */
  rate(tokens: number, since: number): number {
    const s = (this.now() - since) / 1000;
    return s > 0 ? tokens / s : 0;
  }
}

/** A progress callback and `stop`, which ends a live display (call it however the run ends: its redraw timer keeps the process alive). */
export type Printer<A extends unknown[]> = ((...args: A) => void) & { stop(): void };

/** Live displays not yet stopped: every exit path restores the terminal through `restoreTerminal`. */
const live = new Set<{ stop(): void }>();

/** A live display, stopped once (cli-progress shows the cursor and turns line wrap back on when stopped). */
function tracked<T extends { stop(): void }>(display: T): { stop(): void } {
  const entry = {
    stop: () => {
      if (!live.delete(entry)) return;
      display.stop();
    },
  };
  live.add(entry);
  return entry;
}

/** Stop every live display and, on a terminal, show the cursor and turn line wrap on (whatever a display left). */
export function restoreTerminal(stream: NodeJS.WriteStream = process.stderr): void {
  for (const d of [...live]) d.stop();
  if (stream.isTTY === true) stream.write("\x1b[?25h\x1b[?7h");
}

/**
 * Progress of `label` in uniform steps (eval's and coverage's layer passes): a live bar with
 * elapsed time and ETA on a terminal, else a timestamped line at most every `every` seconds and
 * at the end.
 */
export function stepsPrinter(
  stream: NodeJS.WriteStream,
  label: string,
  opts: { now?: () => number; every?: number } = {},
): Printer<[number, number]> {
  const now = opts.now ?? Date.now;
  const every = (opts.every ?? 30) * 1000;
  const started = now();
  let last = 0;
  const bar =
    stream.isTTY === true
      ? new cliProgress.SingleBar(
          { stream, hideCursor: true, barsize: 24, format: `${label} {bar} {value}/{total} layer passes | {info}` },
          cliProgress.Presets.shades_classic,
        )
      : null;
  const print = (done: number, total: number): void => {
    const elapsed = (now() - started) / 1000;
    const info = `elapsed ${duration(elapsed)}, ETA ${duration((elapsed / done) * (total - done))}`;
    if (bar) {
      if (done === 1) bar.start(total, 0, { info });
      bar.update(done, { info });
      if (done === total) bar.stop();
    } else if (now() - last >= every || done === total) {
      last = now();
      stream.write(`${new Date(now()).toISOString()} ${label}: ${done}/${total} layer passes, ${info}\n`);
    }
  };
  const display = bar ? tracked(bar) : null;
  return Object.assign(print, { stop: () => display?.stop() });
}

/**
 * Renders oneshot progress. On a terminal: two live bars (cli-progress), the run's (layers done,
 * elapsed, ETA from the measured layer times) and the current layer's (phase, samples done,
 * tokens/s). Otherwise: plain timestamped lines, one per layer and phase, and a samples line at
 * most every `every` seconds.
 */
export function progressPrinter(stream: NodeJS.WriteStream, opts: { now?: () => number; every?: number } = {}): Printer<[ProgressEvent]> {
  const now = opts.now ?? Date.now;
  const every = (opts.every ?? 30) * 1000;
  const clock = new LayerClock(now);
  let layers = 0;
  let layer = 0;
  let phaseStart = now();
  let lastLine = 0;
  const tty = stream.isTTY === true;
  const multi = tty
    ? new cliProgress.MultiBar(
        {
          stream,
          clearOnComplete: false,
          hideCursor: true,
          barsize: 24,
          format: "{label} {bar} {value}/{total} {what} | {info}",
          autopadding: true,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  const runBar = multi?.create(1, 0, { label: "layers", what: "", info: "" });
  const layerBar = multi?.create(1, 0, { label: "layer ", what: "samples", info: "" });
  let bytesEta: number | null = null;
  const etaText = (): string => {
    const eta = dataFree ? bytesEta : clock.eta(layers - layer);
    return `elapsed ${duration(clock.elapsed())}, ETA ${eta === null ? (dataFree ? "after the first weights" : "after the first layer") : duration(eta)}`;
  };
  const line = (text: string): void => {
    if (multi) multi.log(`${text}\n`);
    else stream.write(`${new Date(now()).toISOString()} ${text}\n`);
  };
  let dataFree = false;
  const print = (e: ProgressEvent): void => {
    switch (e.kind) {
      case "start":
        layers = e.layers;
        dataFree = e.samples === 0;
        line(
          dataFree
            ? `data-free: quantizing ${e.layers} layers from the weights alone (no calibration data)`
            : `calibrating on ${e.samples} samples (${e.tokens} tokens), ${e.layers} layers`,
        );
        runBar?.setTotal(e.layers);
        break;
      case "plan":
        clock.planned = e.plan.layers.map((l) => l.seconds);
        line(planSummary(e.plan));
        break;
      case "resume":
        layer = e.layer + 1;
        line(
          e.layer < 0
            ? `resuming inside layer 1/${e.layers} (its finished expert groups kept in ${e.folder})`
            : `resuming after layer ${e.layer + 1}/${e.layers} (finished layers kept in ${e.folder})`,
        );
        runBar?.update(layer, { info: etaText() });
        break;
      case "resume-groups":
        line(`layer ${e.layer + 1}/${layers}: resuming after ${e.done}/${e.groups} expert groups`);
        break;
      case "expert-group":
        phaseStart = now();
        layerBar?.update(0, { label: `layer ${e.layer + 1} experts ${e.first}-${e.end - 1}`, info: `group ${e.group + 1}/${e.groups}` });
        if (!tty) line(`layer ${e.layer + 1}/${layers}: experts ${e.first}-${e.end - 1} (group ${e.group + 1}/${e.groups})`);
        break;
      case "group-jobs":
        line(
          `layer ${e.layer + 1}/${layers}: ${e.queued} expert group job(s) queued for the workers${e.done ? ` (${e.done} done before)` : ""}`,
        );
        break;
      case "group-job-done":
        line(`layer ${e.layer + 1}/${layers}: group ${e.group + 1} done by ${e.worker} in ${e.seconds.toFixed(1)} s`);
        break;
      case "shard-jobs":
        line(
          `layer ${e.layer + 1}/${layers}: ${e.queued} token shard job(s) queued for the workers (${e.phase})${e.done ? ` (${e.done} done before)` : ""}`,
        );
        break;
      case "shard-job-done":
        line(`layer ${e.layer + 1}/${layers}: token shard ${e.shard + 1} (${e.phase}) done by ${e.worker} in ${e.seconds.toFixed(1)} s`);
        break;
      case "gptq-job-done":
        line(`layer ${e.layer + 1}/${layers}: GPTQ of ${e.linear} done by ${e.worker} in ${e.seconds.toFixed(1)} s`);
        break;
      case "resume-shards":
        line(`resuming after ${e.shards} finished output shard(s) (kept in ${e.folder})`);
        break;
      case "bytes": {
        // data-free: the rate of this run's bytes (an earlier run's count as done), the ETA from it
        const seconds = clock.elapsed();
        const rate = seconds > 0 ? (e.done - e.resumed) / seconds : 0;
        bytesEta = rate > 0 ? (e.total - e.done) / rate : null;
        const mb = (b: number): string => (b / 1e6).toFixed(0);
        const info = `${(rate / 1e6).toFixed(0)} MB/s, ${etaText()}`;
        if (layerBar) {
          layerBar.setTotal(Math.round(e.total / 1e6));
          layerBar.update(Math.round(e.done / 1e6), { label: "weights", what: "MB", info });
          runBar?.update(layer, { info: etaText() });
        } else if (now() - lastLine >= every || e.done === e.total) {
          lastLine = now();
          line(`weights ${mb(e.done)}/${mb(e.total)} MB (${((100 * e.done) / Math.max(1, e.total)).toFixed(0)}%), ${info}`);
        }
        break;
      }
      case "layer":
        layer = e.layer;
        clock.layerBegins();
        runBar?.update(e.layer, { info: etaText() });
        if (!tty) line(`layer ${e.layer + 1}/${layers}: started, ${etaText()}`);
        break;
      case "phase":
        phaseStart = now();
        layerBar?.update(0, { label: `layer ${e.layer + 1} ${e.phase}`, info: "" });
        if (!tty) line(`layer ${e.layer + 1}/${layers}: ${e.phase}`);
        break;
      case "samples": {
        const rate = `${clock.rate(e.tokens, phaseStart).toFixed(0)} tok/s`;
        if (layerBar) {
          layerBar.setTotal(e.total);
          layerBar.update(e.done, { label: `layer ${e.layer + 1} ${e.phase}`, info: rate });
          runBar?.update(layer, { info: etaText() });
        } else if (now() - lastLine >= every || e.done === e.total) {
          lastLine = now();
          line(`layer ${e.layer + 1}/${layers}: ${e.phase} ${e.done}/${e.total} samples, ${rate}`);
        }
        break;
      }
      case "layer-done": {
        clock.layerEnds();
        const s = e.summary;
        const routed = dataFree ? "no data" : s.min_routed === null ? "dense" : `routed min/median ${s.min_routed}/${s.median_routed}`;
        layer = e.layer + 1;
        line(`layer ${s.layer + 1}/${layers}: ${s.quantized_linears} Linear quantized, ${routed}, fallbacks ${s.fallbacks}; ${etaText()}`);
        runBar?.update(layer, { info: etaText() });
        if (layer >= layers) multi?.stop();
        break;
      }
    }
  };
  const display = multi ? tracked(multi) : null;
  return Object.assign(print, { stop: () => display?.stop() });
}

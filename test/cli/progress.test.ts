import { test } from "node:test";
import assert from "node:assert/strict";
import { LayerClock, duration, progressPrinter, restoreTerminal, stepsPrinter } from "../../src/cli/progress.js";
import type { ProgressEvent } from "../../src/pipeline/oneshot.js";

/** A stream that keeps what is written, a terminal or not. */
function fakeStream(isTTY: boolean): NodeJS.WriteStream & { text: () => string } {
  const parts: string[] = [];
  const s = {
    isTTY,
    columns: 120,
    write: (c: string) => {
      parts.push(String(c));
      return true;
    },
    on: () => s,
    removeListener: () => s,
    text: () => parts.join(""),
  };
  return s as unknown as NodeJS.WriteStream & { text: () => string };
}

const summary = (layer: number) => ({
  layer,
  min_routed: 1,
  median_routed: 4,
  experts_without_rows: 0,
  quantized_linears: 51,
  fallbacks: 0,
  gptq_loss: 1,
});

/** A 3-layer run of 2 samples of 100 tokens each, layer 0 taking 10 s and layer 1 20 s. */
function events(t: { now: number }): [number, ProgressEvent][] {
  const e: [number, ProgressEvent][] = [[0, { kind: "start", layers: 3, samples: 2, tokens: 200 }]];
  let at = 0;
  for (const [i, secs] of [
    [0, 10],
    [1, 20],
    [2, 30],
  ] as const) {
    e.push([at, { kind: "layer", layer: i, layers: 3 }], [at, { kind: "phase", layer: i, phase: "calibrate" }]);
    e.push([at + 1000, { kind: "samples", layer: i, phase: "calibrate", done: 1, total: 2, tokens: 100 }]);
    e.push([at + 3000, { kind: "samples", layer: i, phase: "calibrate", done: 2, total: 2, tokens: 200 }]);
    e.push([at + 4000, { kind: "phase", layer: i, phase: "quantize" }]);
    at += secs * 1000;
    e.push([at, { kind: "layer-done", layer: i, summary: summary(i) }]);
  }
  void t;
  return e;
}

test("durations and the ETA from measured layer times", () => {
  assert.deepEqual([duration(42), duration(185), duration(3720)], ["42s", "3m05s", "1h02m"]);
  let now = 0;
  const c = new LayerClock(() => now);
  assert.equal(c.eta(3), null);
  // before any layer is measured, the plan's layer times
  c.planned = [12, 8, 8];
  now = 2000;
  assert.equal(c.eta(3), 26);
  now = 0;
  c.layerBegins();
  now = 10_000;
  c.layerEnds();
  c.layerBegins();
  now = 30_000;
  c.layerEnds();
  c.layerBegins();
  now = 35_000;
  // mean 15 s per layer, 2 layers left including the current one, 5 s into it
  assert.equal(c.eta(2), 25);
  assert.equal(c.elapsed(), 35);
  assert.equal(c.rate(100, 30_000), 20);
});

test("not a terminal: timestamped lines per layer and phase, samples lines rate-limited, the ETA from layer times", () => {
  const t = { now: Date.UTC(2026, 10, 30, 12, 0, 0) };
  const start = t.now;
  const stream = fakeStream(false);
  const p = progressPrinter(stream, { now: () => t.now, every: 30 });
  for (const [at, e] of events(t)) {
    t.now = start + at;
    p(e);
  }
  const lines = stream.text().trim().split("\n");
  for (const l of lines) assert.match(l, /^2026-11-30T12:\d\d:\d\d\.\d{3}Z /);
  assert.match(lines[1] ?? "", /layer 1\/3: started, elapsed 0s, ETA after the first layer/);
  assert.ok(lines.some((l) => /layer 1\/3: calibrate 2\/2 samples, 67 tok\/s/.test(l)));
  assert.ok(lines.some((l) => /layer 1\/3: quantize/.test(l)));
  // after layer 1 (10 s): 2 layers left at 10 s each
  assert.ok(lines.some((l) => /layer 1\/3: 51 Linear quantized, routed min\/median 1\/4, fallbacks 0; elapsed 10s, ETA 20s/.test(l)));
  // after layer 2 (mean 15 s): 1 layer left
  assert.ok(lines.some((l) => /layer 2\/3: .*; elapsed 30s, ETA 15s/.test(l)));
  // a samples line within `every` seconds of the last one is left out, unless it ends the phase
  assert.equal(lines.filter((l) => /calibrate 1\/2/.test(l)).length, 1);
  assert.equal(lines.filter((l) => /calibrate 2\/2/.test(l)).length, 3);
});

test("on a terminal: live bars for the run and the layer (phase, samples, tokens/s, ETA), through cli-progress", () => {
  const t = { now: 0 };
  const stream = fakeStream(true);
  const p = progressPrinter(stream, { now: () => t.now });
  // up to layer 3's last calibration sample, then the display is stopped (as when a run ends there)
  for (const [at, e] of events(t).slice(0, -2)) {
    t.now = at;
    p(e);
  }
  p.stop();
  const out = stream.text();
  assert.match(out, /layers .*2\/3 .*elapsed 33s, ETA 12s/);
  assert.match(out, /layer 3 calibrate .*2\/2 samples \| 67 tok\/s/);
  assert.match(out, /\u2588/, "a drawn bar");
});

test("eval and coverage progress: timestamped layer-pass lines with an ETA when not a terminal", () => {
  let now = Date.UTC(2026, 10, 30, 12, 0, 0);
  const stream = fakeStream(false);
  const p = stepsPrinter(stream, "eval", { now: () => now, every: 10 });
  for (let done = 1; done <= 8; done++) {
    now += 4000;
    p(done, 8);
  }
  p.stop();
  const lines = stream.text().trim().split("\n");
  assert.equal(lines[0], "2026-11-30T12:00:04.000Z eval: 1/8 layer passes, elapsed 4s, ETA 28s");
  assert.equal(lines.at(-1), "2026-11-30T12:00:32.000Z eval: 8/8 layer passes, elapsed 32s, ETA 0s");
  assert.ok(lines.length < 8, "rate-limited");
});

test("restoreTerminal stops a live display left running and shows the cursor and line wrap again, on a terminal only", () => {
  const tty = fakeStream(true);
  const p = progressPrinter(tty, { now: () => 0 });
  p({ kind: "start", layers: 3, samples: 2, tokens: 200 });
  p({ kind: "layer", layer: 0, layers: 3 });
  assert.ok(tty.text().includes("\x1b[?25l"), "the live display hid the cursor");
  // an interrupted run: nobody called p.stop()
  restoreTerminal(tty);
  assert.ok(tty.text().endsWith("\x1b[?25h\x1b[?7h"), JSON.stringify(tty.text().slice(-40)));
  const pipe = fakeStream(false);
  restoreTerminal(pipe);
  assert.equal(pipe.text(), "", "nothing written where stderr is not a terminal");
});

test("a data-free run (no samples) is announced as such, and its layers say no data was seen", () => {
  const pipe = fakeStream(false);
  const p = progressPrinter(pipe, { now: () => 0 });
  p({ kind: "start", layers: 2, samples: 0, tokens: 0 });
  p({ kind: "layer", layer: 0, layers: 2 });
  p({ kind: "layer-done", layer: 0, summary: { ...summary(0), min_routed: null, median_routed: null } });
  p.stop();
  assert.match(pipe.text(), /data-free: quantizing 2 layers from the weights alone/);
  assert.match(pipe.text(), /layer 1\/2: 51 Linear quantized, no data, fallbacks 0/);
});

test("data-free progress in source bytes: rate-limited lines with MB done, percent, this run's MB/s and the ETA from it; a resume names its shards", () => {
  const pipe = fakeStream(false);
  let t = 0;
  const p = progressPrinter(pipe, { now: () => t, every: 30 });
  p({ kind: "start", layers: 2, samples: 0, tokens: 0 });
  p({ kind: "resume-shards", shards: 3, folder: "/x/.out.moecal-work" });
  t = 40_000;
  // 1000 MB resumed from an earlier run; 500 MB more written in 40 s: 12.5 MB/s, 2500 MB left: 200 s
  p({ kind: "bytes", done: 1500e6, total: 4000e6, resumed: 1000e6 });
  t = 50_000;
  p({ kind: "bytes", done: 2000e6, total: 4000e6, resumed: 1000e6 }); // within 30 s of the last line: not printed
  t = 80_000;
  p({ kind: "bytes", done: 4000e6, total: 4000e6, resumed: 1000e6 });
  p.stop();
  const text = pipe.text();
  assert.match(text, /resuming after 3 finished output shard\(s\) \(kept in \/x\/\.out\.moecal-work\)/);
  assert.match(text, /weights 1500\/4000 MB \(38%\), 13 MB\/s, elapsed 40s, ETA 3m20s/);
  assert.doesNotMatch(text, /weights 2000\/4000/);
  assert.match(text, /weights 4000\/4000 MB \(100%\), 38 MB\/s, elapsed 1m20s, ETA 0s/);
});

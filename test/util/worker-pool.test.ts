import { test } from "node:test";
import assert from "node:assert/strict";
import { WorkerPool } from "../../src/util/worker-pool.js";

type Job = { ms: number };
type Done = { start: number; end: number };
const now = (): number => performance.timeOrigin + performance.now();

function pool(depth: number): WorkerPool<Job, Done> {
  return new WorkerPool<Job, Done>(1, {
    what: "sleep",
    script: new URL("./sleep-worker.js", import.meta.url),
    run: async () => ({ start: 0, end: 0 }),
    transfer: () => [],
    depth,
  });
}

test("a worker of depth 2 takes its next job while it runs one, and runs them one after the other in order", async () => {
  const p = pool(2);
  try {
    const first = await p.submit(() => ({ ms: 150 }));
    const second = await p.submit(() => ({ ms: 10 }));
    const handedOver = now();
    const third = await p.submit(() => ({ ms: 10 }));
    const [a, b, c] = await Promise.all([first.result, second.result, third.result]);
    assert.ok(handedOver < a.end, "the second job waited for the first to end before it was handed over");
    assert.ok(b.start >= a.end, "the queued job started before the running one ended");
    assert.ok(c.start >= b.end, "the third job started before the second ended");
  } finally {
    await p.close();
  }
});

test("a worker of depth 1 gets its next job only when it has replied", async () => {
  const p = pool(1);
  try {
    const first = await p.submit(() => ({ ms: 50 }));
    await p.submit(() => ({ ms: 10 }));
    assert.ok(now() >= (await first.result).end, "the second job was handed over while the first ran");
  } finally {
    await p.close();
  }
});

/**
 * A nats-server (Debian's package) of a test's own: JetStream on, on a free loopback port, its store
 * in a temporary folder; stopped by the test. Without the binary the distributed tests are skipped
 * with NATS_SKIP's message.
 */
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

const CANDIDATES = [...(process.env.PATH ?? "").split(path.delimiter), "/usr/sbin", "/usr/local/sbin"].map((d) =>
  path.join(d, "nats-server"),
);

export const NATS_BINARY = CANDIDATES.find((f) => fs.existsSync(f)) ?? null;

/** Why the distributed tests are skipped here, or false. */
export const NATS_SKIP: string | false =
  NATS_BINARY === null
    ? "nats-server not found: install it (Debian: apt-get install nats-server; .ci/run installs it) to run the distributed tests"
    : false;

/** A free TCP port on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export interface NatsServer {
  url: string;
  stop(): Promise<void>;
}

/**
 * Start a JetStream server on a free loopback port with its store under `dir`; resolves once it is
 * ready. `extra`: more nats-server arguments (TLS, a user); `scheme`: the URL's (tls with TLS).
 */
export async function startNats(dir: string, extra: string[] = [], scheme = "nats"): Promise<NatsServer> {
  if (NATS_BINARY === null) throw new Error(String(NATS_SKIP));
  const port = await freePort();
  const proc: ChildProcess = spawn(NATS_BINARY, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir, ...extra], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  await new Promise<void>((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`nats-server did not start in 10 s:\n${log}`)), 10_000);
    proc.stderr?.on("data", (d: Buffer) => {
      log += String(d);
      if (log.includes("Server is ready")) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once("exit", (code) => reject(new Error(`nats-server exited (${code}):\n${log}`)));
  });
  return {
    url: `${scheme}://127.0.0.1:${port}`,
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null) return resolve();
        proc.once("exit", () => resolve());
        proc.kill("SIGTERM");
      }),
  };
}

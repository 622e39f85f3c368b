/**
 * The work folder as a hostile neighbour or a full disk would meet it: private permissions, links
 * planted inside never written through, and the space an old work folder holds counted as the
 * run's own (a resume reuses it, --restart frees it).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, tempDir } from "../helpers.js";
import { canMountTmpfs } from "../cli/bad-inputs.fixtures.js";

const child = path.join(ROOT, "dist", "test", "pipeline", "resume-child.js");
const tmp = tempDir("moecal-work-");
const run = (args: string[]): ReturnType<typeof spawnSync> => spawnSync(process.execPath, [child, ...args], { encoding: "utf8" });
const workOf = (out: string): string => path.join(path.dirname(out), `.${path.basename(out)}.moecal-work`);

test("the work folder is private: the folder 0700, every file in it 0600", () => {
  const out = path.join(tmp, "private");
  assert.equal(run([out, "1", "state", "--quick"]).signal, "SIGKILL");
  const work = workOf(out);
  assert.equal(fs.statSync(work).mode & 0o777, 0o700);
  const files = fs.readdirSync(work);
  assert.ok(files.includes("embeddings.bin") || files.includes("hidden-1.bin"), files.join(", "));
  for (const f of files) assert.equal(fs.statSync(path.join(work, f)).mode & 0o777, 0o600, f);
});

test("links planted in the work folder in place of temporaries are replaced, never written through; one in place of a finished layer is refused", () => {
  const out = path.join(tmp, "planted");
  assert.equal(run([out, "1", "state", "--quick"]).signal, "SIGKILL");
  const work = workOf(out);
  const victim = path.join(tmp, "victim.txt");
  fs.writeFileSync(victim, "precious");
  for (const f of ["layer-2.safetensors.tmp", "hidden-2.bin.tmp", "state.json.tmp", "hidden-3.bin.tmp"])
    fs.symlinkSync(victim, path.join(work, f));
  const again = run([out, "--quick"]);
  assert.equal(again.status, 0, String(again.stderr));
  assert.equal(fs.readFileSync(victim, "utf8"), "precious");
  assert.ok(fs.existsSync(path.join(out, "moecal.json")));

  const out2 = path.join(tmp, "planted-layer");
  assert.equal(run([out2, "1", "state", "--quick"]).signal, "SIGKILL");
  const layer0 = path.join(workOf(out2), "layer-0.safetensors");
  fs.copyFileSync(layer0, victim);
  fs.rmSync(layer0);
  fs.symlinkSync(victim, layer0);
  const refused = run([out2, "--quick"]);
  assert.notEqual(refused.status, 0);
  assert.match(
    String(refused.stderr),
    /is damaged: state\.json says layer 1 finished, but layer-0\.safetensors is not a regular file \(moecal never follows links in its work folder\); rerun with --restart/,
  );
});

test("a resume and --restart on a nearly full disk: the old work folder's space counts as free", { skip: canMountTmpfs() ?? false }, () => {
  const mnt = path.join(tmp, "small");
  fs.mkdirSync(mnt);
  assert.equal(spawnSync("mount", ["-t", "tmpfs", "-o", "size=4096k", "tmpfs", mnt]).status, 0);
  try {
    for (const restart of [false, true]) {
      const out = path.join(mnt, `out-${restart}`);
      assert.equal(run([out, "0", "state", "--quick"]).signal, "SIGKILL");
      // a stale temporary of 3 MiB: the disk has less free than the plan needs, unless the work folder counts
      fs.writeFileSync(path.join(workOf(out), "hidden-1.bin.tmp"), Buffer.alloc(3072 * 1024));
      const again = run([out, "--quick", ...(restart ? ["--restart"] : [])]);
      assert.equal(again.status, 0, String(again.stderr));
      fs.rmSync(out, { recursive: true });
    }
  } finally {
    spawnSync("umount", [mnt]);
  }
});

test("two writers of one work file with their own tags (a redelivered job beside the slow one) each put a whole file in place, never a mix", async () => {
  const { privateWriter } = await import("../../src/pipeline/work-folder.js");
  const dir = tempDir("moecal-writers-");
  const file = path.join(dir, "layer-1-group-0.json");
  const [a, b] = [privateWriter(file, "host-a_1"), privateWriter(file, "host-b_2")];
  a.write(Buffer.from("aaaa"));
  b.write(Buffer.from("bbbb"));
  a.write(Buffer.from("AAAA"));
  a.commit();
  assert.equal(fs.readFileSync(file, "utf8"), "aaaaAAAA");
  b.write(Buffer.from("BBBB"));
  b.commit();
  assert.equal(fs.readFileSync(file, "utf8"), "bbbbBBBB");
  assert.deepEqual(fs.readdirSync(dir), ["layer-1-group-0.json"], "no temporary left");
  fs.rmSync(dir, { recursive: true });
});

// Runs openai_test.py (the official `openai` Python package, in .venv) against the real system;
// each of its tests becomes a test here.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { MODEL, startSystem } from "./system.mjs";

test("openai (Python)", async (t) => {
  const sys = await startSystem("openai-python");
  let out;
  try {
    const py = join(import.meta.dirname, ".venv/bin/python");
    const env = {
      ...process.env,
      CHATFLEET_URL: sys.url,
      CHATFLEET_TIGHT_URL: sys.tightUrl,
      CHATFLEET_DEMO_MAX_TOKENS: String(MODEL.max_tokens),
    };
    // spawnSync would block the event loop, but nothing else runs in this process meanwhile.
    out = spawnSync(py, [join(import.meta.dirname, "openai_test.py")], { env, encoding: "utf8", timeout: 180_000 });
  } finally {
    await sys.stop();
  }
  if (out.stderr) process.stderr.write(out.stderr);
  const lines = out.stdout.split("\n").filter((l) => /^(not )?ok /.test(l));
  assert.ok(lines.length > 0, `no results (exit ${out.status}, ${out.error ?? ""})`);
  for (const line of lines) {
    const m = /^(not )?ok (\w+)(?:: (.*))?$/.exec(line);
    await t.test(m[2], () => assert.ok(!m[1], m[3]));
  }
  assert.equal(out.status, 0);
});

// Starts the real system for the client-package tests: a private redis-server, one worker and two
// gateways of target/debug/chatfleet on free ports: `url` (tenant "dev", default limits) and
// `tightUrl` (tenant "tight", one turn in flight at a time, for the 429 tests). The demo model answers
// in about a second, slow enough to close a stream mid-answer. stop() kills everything; so does
// the process's exit.

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, openSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { freePort, until } from "../../web/browser/system.js";

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), "debug/chatfleet");
export const ARTIFACTS = join(import.meta.dirname, "artifacts");

/** The demo model's settings (tests derive expectations from what the gateway returns). */
export const MODEL = { ttft_ms: 50, tokens_per_sec: 40, max_tokens: 40 };

function redisPing(port) {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.setTimeout(1000, () => (s.destroy(), ok(false)));
    s.on("data", (d) => (s.end(), ok(d.toString().startsWith("+PONG"))));
    s.on("error", () => ok(false));
  });
}

export async function startSystem(name) {
  const dir = mkdtempSync(join(tmpdir(), "chatfleet-clients-"));
  const logDir = join(ARTIFACTS, "logs", name);
  mkdirSync(logDir, { recursive: true });
  const procs = [];
  const run = (label, cmd, args, env = {}) => {
    const out = openSync(join(logDir, `${label}.log`), "a");
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", out, out] });
    procs.push(p);
    return p;
  };
  const stop = async () => {
    await Promise.all(
      procs.map(
        (p) =>
          new Promise((ok) => {
            if (p.exitCode !== null || p.signalCode !== null) return ok();
            const hard = setTimeout(() => p.kill("SIGKILL"), 3000);
            p.once("exit", () => (clearTimeout(hard), ok()));
            p.kill("SIGTERM");
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", () => procs.forEach((p) => p.kill("SIGKILL")));
  // A signal ends the process without "exit" handlers unless it exits itself.
  for (const sig of ["SIGTERM", "SIGINT"]) process.once(sig, () => process.exit(128 + (sig === "SIGTERM" ? 15 : 2)));
  try {
    const redisPort = await freePort();
    run("redis", "redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir]);
    const env = {
      CHATFLEET__REDIS__URL: `redis://127.0.0.1:${redisPort}`,
      CHATFLEET__REDIS__KEY_PREFIX: `clients${process.pid}`,
      CHATFLEET__METRICS__LISTEN: "127.0.0.1:0",
      CHATFLEET__TELEMETRY__FORMAT: "json",
      CHATFLEET__MODEL__DEMO__TTFT_MS: String(MODEL.ttft_ms),
      CHATFLEET__MODEL__DEMO__TOKENS_PER_SEC: String(MODEL.tokens_per_sec),
      CHATFLEET__MODEL__DEMO__MAX_TOKENS: String(MODEL.max_tokens),
    };
    const [port, tightPort] = [await freePort(), await freePort()];
    const url = `http://127.0.0.1:${port}`;
    const tightUrl = `http://127.0.0.1:${tightPort}`;
    await until("redis-server", () => redisPing(redisPort));
    run("worker", BIN, ["worker"], env);
    run("gateway", BIN, ["gateway"], { ...env, CHATFLEET__GATEWAY__LISTEN: `127.0.0.1:${port}` });
    run("gateway-tight", BIN, ["gateway"], {
      ...env,
      CHATFLEET__GATEWAY__LISTEN: `127.0.0.1:${tightPort}`,
      CHATFLEET__GATEWAY__TENANT: "tight",
      CHATFLEET__QUOTA__MAX_INFLIGHT_TURNS: "1",
    });
    for (const u of [url, tightUrl]) {
      await until(`gateway ${u}`, () => fetch(`${u}/readyz`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok));
    }
    return { url, tightUrl, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** The session's stored state (a long-poll without `after` answers with a snapshot). */
export async function snapshot(url, session) {
  const r = await fetch(`${url}/v1/sessions/${session}/events`);
  if (!r.ok) throw new Error(`snapshot: ${r.status} ${await r.text()}`);
  return (await r.json()).snapshot;
}

/** Polls the session until the assistant message of `turn` is stored, and returns it. */
export async function storedAnswer(url, session, turn) {
  let found;
  await until(`the answer of ${turn}`, async () => {
    const s = await snapshot(url, session);
    found = s.messages.find((m) => m.role === "assistant" && m.turn_id === turn);
    return found !== undefined;
  }, 15_000);
  return found;
}

// Starts the real system for browser tests: a private redis-server, one worker and N gateways
// of target/debug/chatfleet, each on a free port. Readiness is polled (GET /readyz), with a
// deadline. Every process is killed by stop(), and on exit even if a test throws.

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, openSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "../..");
export const ARTIFACTS = join(ROOT, "web/artifacts");
const BIN = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), "debug/chatfleet");
const READY_DEADLINE_MS = 30_000;

const live = new Set();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Polls `probe` until it resolves true, or fails after `ms`. */
export async function until(what, probe, ms = READY_DEADLINE_MS) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await probe().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 50)); // a poll interval, not a stand-in for readiness
  }
  throw new Error(`${what} not ready within ${ms} ms`);
}

function redisPing(port) {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.setTimeout(1000, () => (s.destroy(), ok(false)));
    s.on("data", (d) => (s.end(), ok(d.toString().startsWith("+PONG"))));
    s.on("error", () => ok(false));
  });
}

const readyz = (url) => fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok);

function configFile(dir, toml, name = "gateway.toml") {
  const path = join(dir, name);
  writeFileSync(path, toml);
  return path;
}

function start(name, cmd, args, env, logDir) {
  const out = openSync(join(logDir, `${name}.log`), "a");
  const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", out, out] });
  live.add(p);
  p.on("exit", () => live.delete(p));
  return p;
}

/** Starts `chatfleet local-postgres` (a private PostgreSQL) and resolves its URL. */
function startPostgres(logDir, procs) {
  const out = openSync(join(logDir, "postgres.log"), "a");
  const p = spawn(BIN, ["local-postgres"], { stdio: ["ignore", "pipe", out] });
  live.add(p);
  p.on("exit", () => live.delete(p));
  procs.push(p);
  return new Promise((ok, fail) => {
    let buf = "";
    const timer = setTimeout(() => fail(new Error("postgres not ready in time")), READY_DEADLINE_MS * 2);
    p.stdout.on("data", (d) => {
      buf += d;
      const url = buf.split("\n").find((l) => l.startsWith("postgres://"));
      if (url) (clearTimeout(timer), ok(url.trim()));
    });
    p.on("exit", () => fail(new Error("local-postgres exited")));
  });
}

/** Sends one command to a redis-server (e.g. FLUSHALL) and resolves its reply line. */
export function redisCommand(port, command) {
  return new Promise((ok, fail) => {
    const s = connect(port, "127.0.0.1", () => s.write(`${command}\r\n`));
    s.setTimeout(2000, () => (s.destroy(), fail(new Error("redis timeout"))));
    s.on("data", (d) => (s.end(), ok(d.toString().trim())));
    s.on("error", fail);
  });
}

/**
 * `config`: TOML layered over the defaults for the gateways (`--config`), e.g. allowed origins.
 * `workerConfig`: the same for the worker (e.g. what media an upstream takes, a list).
 * `archive`: also a private PostgreSQL as the archive (the worker runs the archiver).
 * `env`: more settings for every process, as CHATFLEET__… variables (e.g. an upstream).
 * @param {{gateways?: number, model?: {ttft_ms:number, tokens_per_sec:number, max_tokens:number}, name?: string, config?: string, workerConfig?: string, archive?: boolean, env?: Record<string, string>}} o
 */
export async function startSystem({ gateways = 2, model = { ttft_ms: 100, tokens_per_sec: 25, max_tokens: 80 }, name = "system", config, workerConfig, archive = false, env: extraEnv = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "chatfleet-web-"));
  const logDir = join(ARTIFACTS, "logs", name);
  mkdirSync(logDir, { recursive: true });
  const redisPort = await freePort();
  const procs = [];
  const sys = { urls: [], gw: [], procs, stop, redisPort };
  try {
    procs.push(start("redis", "redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {}, logDir));
    await until("redis-server", () => redisPing(redisPort));
    const env = {
      CHATFLEET__REDIS__URL: `redis://127.0.0.1:${redisPort}`,
      CHATFLEET__REDIS__KEY_PREFIX: `web${process.pid}`,
      CHATFLEET__METRICS__LISTEN: "127.0.0.1:0",
      CHATFLEET__TELEMETRY__FORMAT: "json",
      CHATFLEET__MODEL__DEMO__TTFT_MS: String(model.ttft_ms),
      CHATFLEET__MODEL__DEMO__TOKENS_PER_SEC: String(model.tokens_per_sec),
      CHATFLEET__MODEL__DEMO__MAX_TOKENS: String(model.max_tokens),
      ...extraEnv,
    };
    if (archive) {
      env.CHATFLEET__ARCHIVE__URL = await startPostgres(logDir, procs);
      env.CHATFLEET__ARCHIVE__BLOCK_MS = "100";
    }
    const workerArgs = workerConfig === undefined ? ["worker"] : ["--config", configFile(dir, workerConfig, "worker.toml"), "worker"];
    procs.push(start("worker", BIN, workerArgs, env, logDir));
    for (let i = 0; i < gateways; i++) {
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const args = config === undefined ? ["gateway"] : ["--config", configFile(dir, config), "gateway"];
      const p = start(`gateway${i + 1}`, BIN, args, { ...env, CHATFLEET__GATEWAY__LISTEN: `127.0.0.1:${port}` }, logDir);
      procs.push(p);
      sys.urls.push(url);
      sys.gw.push(p);
    }
    for (const url of sys.urls) await until(`gateway ${url}`, () => readyz(url));
    return sys;
  } catch (e) {
    await stop();
    throw e;
  }

  async function stop() {
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
  }
}

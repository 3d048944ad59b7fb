// Embedding from another origin, as the browser enforces it: a page at an origin listed in
// gateway.allowed_origins imports chatfleet.js from the gateway and streams an answer over
// WebSocket, SSE and long-poll (POST sends with a CORS preflight); a page of an unlisted origin
// can neither import the library nor open a socket. Each page is served by a small HTTP server
// of its own under a name of its own (embed.test, stranger.test: Chromium resolves them to
// 127.0.0.1), so its origin is neither the gateway's nor a loopback one, which a dev gateway
// trusts.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { startSystem, freePort } from "./system.js";
import { launch, WAIT_MS } from "./helpers.js";

let sys;
let browser;
let listed;
let stranger;

/** A page server on <name>:<port> whose page runs `script` (a module); the gateway's URL is
 * the page's `?gw=` (the gateway starts after the page servers, whose origins it must list). */
async function pageServer(name, script) {
  const port = await freePort();
  const server = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(`<!doctype html><meta charset="utf-8"><title>embed</title><script type="module">${script}</script>`);
  });
  await new Promise((ok) => server.listen(port, "127.0.0.1", ok));
  return { origin: `http://${name}:${port}`, close: () => new Promise((ok) => server.close(ok)) };
}

// The embedding page: one chat per transport, each on a new session, one message each; the
// final answer texts land in window.results.
const EMBED = `
  const gw = new URLSearchParams(location.search).get("gw");
  window.results = {};
  try {
    const { ChatClient } = await import(gw + "/chatfleet.js");
    for (const transport of ["ws", "sse", "poll"]) {
      const sessionId = "cors-" + transport + "-" + Math.random().toString(36).slice(2, 10);
      const chat = new ChatClient({ sessionId, urls: [gw], transports: [transport], storage: null });
      const done = new Promise((ok) => chat.addEventListener("change", () => {
        const last = chat.conversation.messages.at(-1);
        if (last?.role === "assistant" && last.status === "done") ok(last.text);
      }));
      chat.connect();
      await chat.send("Tell me about " + transport);
      window.results[transport] = { sessionId, text: await done, transport: chat.transport };
      chat.close?.();
    }
  } catch (e) {
    window.results.error = String(e);
  }
  window.finished = true;
`;

// A page of an unlisted origin: tries the import, then a raw WebSocket.
const STRANGER = `
  const gw = new URLSearchParams(location.search).get("gw");
  window.results = {};
  try {
    await import(gw + "/chatfleet.js");
    window.results.imported = true;
  } catch (e) {
    window.results.imported = false;
  }
  const ws = new WebSocket(gw.replace("http", "ws") + "/v1/ws?session_id=stranger");
  window.results.ws = await new Promise((ok) => {
    ws.onopen = () => ok("open");
    ws.onclose = (e) => ok("closed " + e.code);
  });
  window.finished = true;
`;

before(async () => {
  // The page origins must be known before the gateway starts: the page servers come first.
  listed = await pageServer("embed.test", EMBED);
  stranger = await pageServer("stranger.test", STRANGER);
  sys = await startSystem({
    name: "cors",
    gateways: 1,
    model: { ttft_ms: 50, tokens_per_sec: 200, max_tokens: 30 },
    config: `[gateway]\nallowed_origins = ["${listed.origin}"]\n`,
  });
  browser = await launch(["--host-resolver-rules=MAP embed.test 127.0.0.1, MAP stranger.test 127.0.0.1"]);
});
after(async () => {
  await browser?.close();
  await sys?.stop();
  await listed?.close();
  await stranger?.close();
});

/** The stored answer of a session's only turn, read from the gateway by long-poll (no Origin):
 * a poll without an epoch gets the snapshot of the session's history. */
async function storedAnswer(sessionId) {
  const res = await fetch(`${sys.urls[0]}/v1/sessions/${sessionId}/events?after=0`, { signal: AbortSignal.timeout(WAIT_MS) });
  assert.equal(res.status, 200);
  const { snapshot } = await res.json();
  const answer = snapshot.messages.at(-1);
  assert.equal(answer.role, "assistant");
  assert.equal(answer.status, "done", "the turn ended");
  return answer.text;
}

test("a page of a listed origin imports chatfleet.js and streams over WebSocket, SSE and long-poll", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${listed.origin}/?gw=${sys.urls[0]}`);
  await page.waitForFunction(() => window.finished === true, null, { timeout: WAIT_MS * 2 });
  const results = await page.evaluate(() => window.results);
  assert.equal(results.error, undefined, results.error);
  for (const transport of ["ws", "sse", "poll"]) {
    const r = results[transport];
    assert.equal(r.transport, transport, "no fallback to another transport");
    assert.ok(r.text.length > 0);
    assert.equal(r.text, await storedAnswer(r.sessionId), `${transport}: the page holds exactly what the gateway streamed`);
  }
  await context.close();
});

test("a page of an unlisted origin can neither import the library nor open a socket", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${stranger.origin}/?gw=${sys.urls[0]}`);
  await page.waitForFunction(() => window.finished === true, null, { timeout: WAIT_MS });
  const results = await page.evaluate(() => window.results);
  assert.equal(results.imported, false, "no CORS headers for an unlisted origin");
  assert.equal(results.ws, "closed 1006", "the handshake was refused (403)");
  await context.close();
});

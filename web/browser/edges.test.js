// Transport edges a browser meets on its own: EventSource's automatic reconnect, which sends
// only Last-Event-ID, and a WebSocket that keeps sending frames over the size limit.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, request } from "node:http";
import { startSystem, freePort } from "./system.js";
import { launch, WAIT_MS } from "./helpers.js";

let sys;
let browser;
before(async () => {
  sys = await startSystem({ name: "edges", gateways: 1, model: { ttft_ms: 0, tokens_per_sec: 100, max_tokens: 60 } });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
});

/**
 * A plain HTTP relay in front of the gateway that ends the first SSE response after it has
 * passed on `cutAfter` events, as a proxy timeout or a network change does, and records the
 * Last-Event-ID of every SSE request.
 */
async function cuttingRelay(target, cutAfter) {
  const seen = [];
  const { hostname, port } = new URL(target);
  const server = createServer((req, res) => {
    const sse = (req.headers.accept ?? "").includes("text/event-stream");
    if (sse) seen.push(req.headers["last-event-id"] ?? null);
    const cut = sse && seen.length === 1;
    const up = request({ hostname, port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      let ids = 0;
      r.on("data", (chunk) => {
        res.write(chunk);
        ids += (chunk.toString().match(/^id:/gm) ?? []).length;
        if (cut && ids >= cutAfter) {
          up.destroy();
          res.end();
        }
      });
      r.on("end", () => res.end());
      r.on("error", () => res.end());
    });
    up.on("error", () => res.end());
    req.pipe(up);
  });
  const relayPort = await freePort();
  await new Promise((ok) => server.listen(relayPort, "127.0.0.1", ok));
  return { url: `http://127.0.0.1:${relayPort}`, seen, close: () => server.close() };
}

test("an EventSource that reconnects by itself resumes with a replay of what it missed", async () => {
  const relay = await cuttingRelay(sys.urls[0], 5);
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const sid = `es${Date.now()}`;
  await page.goto(`${relay.url}/healthz`);
  await page.evaluate((sid) => {
    window.__got = [];
    const es = new EventSource(`/v1/sessions/${sid}/events`);
    es.onmessage = (e) => window.__got.push({ id: e.lastEventId, event: JSON.parse(e.data) });
    es.addEventListener("control", (e) => window.__got.push({ control: JSON.parse(e.data) }));
  }, sid);
  await page.waitForFunction(() => window.__got.some((g) => g.control?.type === "welcome"));
  const prompt = "resume me from where the stream was cut";
  const sent = await fetch(`${sys.urls[0]}/v1/sessions/${sid}/messages`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ client_msg_id: "m1", text: prompt }),
  });
  assert.equal(sent.status, 200);
  await page.waitForFunction(() => window.__got.some((g) => g.event?.type === "done"));
  const got = await page.evaluate(() => window.__got);
  await context.close();
  relay.close();

  assert.equal(relay.seen.length, 2, "the stream was cut once and EventSource reconnected once");
  assert.equal(relay.seen[0], null);
  assert.match(relay.seen[1], /^[0-9a-f]+:\d+$/, "Last-Event-ID is <epoch>:<seq>");
  const welcomes = got.filter((g) => g.control?.type === "welcome").map((g) => g.control);
  assert.equal(welcomes.length, 2);
  assert.equal(welcomes[1].resume, "replay", "the reconnect is answered with a replay, not a snapshot");
  assert.equal(got.filter((g) => g.control?.type === "snapshot").length, 1, "only the first connection's");
  // Every event exactly once, in order, across the cut; each id is the epoch and the seq.
  const events = got.filter((g) => g.event);
  let next = events[0].event.first_seq ?? events[0].event.seq;
  for (const { id, event } of events) {
    assert.equal(event.first_seq ?? event.seq, next, `no gap or repeat at seq ${next}`);
    assert.equal(id, `${welcomes[0].epoch}:${event.seq}`);
    next = event.seq + 1;
  }
  const live = events.filter((g) => g.event.type === "delta").map((g) => g.event.text).join("");
  // The stored answer, read back over long-poll (a snapshot of the session).
  const stored = await (await fetch(`${sys.urls[0]}/v1/sessions/${sid}/events`)).json();
  const answer = stored.snapshot.messages.find((m) => m.role === "assistant");
  assert.ok(answer.text.length > 0);
  assert.equal(live, answer.text);
});

test("a WebSocket that keeps sending frames over the limit is closed with 1009, not reset", async () => {
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  await page.goto(`${sys.urls[0]}/healthz`);
  const closed = await page.evaluate(
    ({ sid, waitMs }) =>
      new Promise((ok, fail) => {
        setTimeout(() => fail(new Error("no close in time")), waitMs);
        const ws = new WebSocket(`ws://${location.host}/v1/ws?session_id=${sid}`);
        const frames = [];
        ws.onopen = () => ws.send(JSON.stringify({ type: "hello", session_id: sid }));
        ws.onmessage = (m) => {
          const f = JSON.parse(m.data);
          frames.push(f.type);
          if (f.type === "welcome") {
            // 4 × 200 KiB against a 64 KiB limit: the first is refused, the rest are in flight.
            const big = JSON.stringify({ type: "send", client_msg_id: "m1", text: "x".repeat(200 * 1024) });
            for (let i = 0; i < 4; i++) ws.send(big);
          }
        };
        ws.onclose = (e) => ok({ code: e.code, frames });
      }),
    { sid: `big${Date.now()}`, waitMs: WAIT_MS },
  );
  await context.close();
  assert.equal(closed.code, 1009, `closed with ${closed.code} after ${closed.frames.join(", ")}`);
  assert.ok(closed.frames.includes("welcome"));
});

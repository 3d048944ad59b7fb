// The HTTP transports against a fake fetch: SSE parsing and resume, long-poll, POSTed sends.
import test from "node:test";
import assert from "node:assert/strict";
import { ChatClient } from "../../src/gateway/static/chatfleet.js";
import { FakeClock, MemoryStorage } from "./fakes.js";

const tick = () => new Promise((r) => setImmediate(r));
async function settle() {
  for (let i = 0; i < 20; i++) await tick();
}

/** An SSE response body the test writes into. */
function sseBody() {
  let ctl;
  const stream = new ReadableStream({ start: (c) => (ctl = c) });
  const enc = new TextEncoder();
  return { stream, write: (s) => ctl.enqueue(enc.encode(s)), end: () => ctl.close() };
}

const frame = (obj, event) => `${event ? `event: ${event}\n` : ""}${obj.seq && !event ? `id: ${obj.seq}\n` : ""}data: ${JSON.stringify(obj)}\n\n`;

function client(opts) {
  return new ChatClient({ sessionId: "s1", urls: ["http://gw.test"], clock: new FakeClock(), storage: new MemoryStorage(), lowPower: false, ...opts });
}

test("SSE: control frames and events, split across chunks, with a Bearer token", async () => {
  const body = sseBody();
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    if (init.method === "POST") return Response.json({ type: "ack", client_msg_id: JSON.parse(init.body).client_msg_id, turn_id: "t1", seq: 1 });
    return new Response(body.stream, { headers: { "content-type": "text/event-stream" } });
  };
  const c = client({ transports: ["sse"], fetch, token: "tok" });
  c.connect();
  await settle();
  assert.equal(calls[0].init.headers.Accept, "text/event-stream");
  assert.equal(calls[0].init.headers.Authorization, "Bearer tok");
  body.write(frame({ type: "welcome", session_id: "s1", epoch: "e", seq: 0, resume: "snapshot" }, "control"));
  body.write(frame({ type: "snapshot", epoch: "e", seq: 0, messages: [], active: null, reason: "new" }, "control"));
  await settle();
  assert.equal(c.state, "live");
  const ack = await c.send("hi");
  assert.equal(ack.turn_id, "t1");
  assert.equal(calls[1].url, "http://gw.test/v1/sessions/s1/messages");
  assert.equal(calls[1].init.headers.Authorization, "Bearer tok");
  const text = frame({ seq: 1, type: "user_message", turn_id: "t1", client_msg_id: "x", text: "hi" }) + ": hb\n\n" +
    frame({ seq: 2, type: "delta", turn_id: "t1", text: "naïve 🚀" });
  body.write(text.slice(0, 37));
  await settle();
  body.write(text.slice(37));
  await settle();
  assert.equal(c.conversation.find("assistant", "t1").text, "naïve 🚀");
  c.close();
});

test("SSE resume sends last_seq and epoch; a refused stream counts as a failure", async () => {
  const storage = new MemoryStorage();
  storage.setItem("chatfleet:v1:s1", JSON.stringify({ v: 1, epoch: "e9", seq: 7, conv: { messages: [] }, outbox: [] }));
  const urls = [];
  const c = client({ transports: ["sse"], storage, fetch: async (url) => (urls.push(url), new Response("{}", { status: 503 })) });
  c.connect();
  await settle();
  assert.equal(urls[0], "http://gw.test/v1/sessions/s1/events?last_seq=7&epoch=e9");
  assert.equal(c.state, "connecting");
  c.close();
});

test("long-poll: snapshot first, then events after the cursor, and refused sends", async () => {
  const answers = [
    { snapshot: { type: "snapshot", epoch: "e", seq: 2, messages: [{ role: "user", turn_id: "t0", text: "old" }], active: null, reason: "new" } },
    { epoch: "e", seq: 4, events: [{ seq: 3, type: "user_message", turn_id: "t1", client_msg_id: "m", text: "q" }, { seq: 4, type: "turn_started", turn_id: "t1", attempt: 1 }] },
  ];
  const gets = [];
  let release;
  const fetch = async (url, init) => {
    if (init.method === "POST") return Response.json({ type: "error", code: "busy", message: "running", retry_after_ms: 500 }, { status: 409 });
    gets.push(url);
    if (answers.length) return Response.json(answers.shift());
    await new Promise((r) => (release = r));
    return Response.json({ epoch: "e", seq: 4, events: [] });
  };
  const c = client({ transports: ["poll"], fetch });
  c.connect();
  await settle();
  assert.equal(c.state, "live");
  assert.equal(gets[0], "http://gw.test/v1/sessions/s1/events?wait_ms=0");
  assert.equal(gets[1], "http://gw.test/v1/sessions/s1/events?after=2&epoch=e&wait_ms=25000");
  assert.equal(gets[2], "http://gw.test/v1/sessions/s1/events?after=4&epoch=e&wait_ms=25000");
  assert.equal(c.conversation.activeTurnId, "t1");
  await assert.rejects(c.send("again"), (e) => e.code === "busy");
  c.close();
  release();
});

// The client against a fake WebSocket and a manual clock: resume, ordering, sends, reconnects.
import test from "node:test";
import assert from "node:assert/strict";
import { ChatClient } from "../../src/gateway/static/chatfleet.js";
import { FakeClock, FakeWebSocket, MemoryStorage } from "./fakes.js";

const URLS = ["http://gw1.test", "http://gw2.test"];

function setup(opts = {}) {
  FakeWebSocket.reset();
  const clock = opts.clock ?? new FakeClock();
  const storage = opts.storage ?? new MemoryStorage();
  const client = new ChatClient({
    sessionId: "s1",
    urls: URLS,
    WebSocket: FakeWebSocket,
    clock,
    storage,
    random: () => 1, // the top of the jitter range, so delays are exact
    lowPower: false,
    ...opts.client,
  });
  const seen = { events: [], states: [], failed: [], errors: [] };
  client.addEventListener("event", (e) => seen.events.push(e.detail));
  client.addEventListener("state", (e) => seen.states.push(e.detail.state));
  client.addEventListener("sendfailed", (e) => seen.failed.push(e.detail));
  client.addEventListener("error", (e) => seen.errors.push(e.detail));
  return { client, clock, storage, seen };
}

/** Opens the newest socket and answers its hello like a gateway would. */
function welcome(ws, { seq = 0, resume = "snapshot", epoch = "e1", messages = [], active = null } = {}) {
  ws.open();
  ws.receive({ type: "welcome", session_id: "s1", epoch, seq, resume });
  if (resume === "snapshot") ws.receive({ type: "snapshot", epoch, seq, messages, active, reason: "new" });
}

const delta = (seq, text, first_seq) => ({ seq, ...(first_seq ? { first_seq } : {}), type: "delta", turn_id: "t1", text });
const userMsg = (seq, cmid = "m1", text = "hi") => ({ seq, type: "user_message", turn_id: "t1", client_msg_id: cmid, text });
const started = (seq) => ({ seq, type: "turn_started", turn_id: "t1", attempt: 1 });
const done = (seq) => ({ seq, type: "done", turn_id: "t1", usage: { prompt_tokens: 1, completion_tokens: 2 } });
const answer = (client) => client.conversation.find("assistant", "t1")?.text;

test("a new session says hello without a cursor and goes live on welcome", () => {
  const { client, seen } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  assert.equal(ws.url, "ws://gw1.test/v1/ws?session_id=s1");
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "hello", session_id: "s1" }]);
  welcome(ws);
  assert.equal(client.state, "live");
  assert.deepEqual(seen.states, ["connecting", "live"]);
  assert.equal(client.lastSeq, 0);
  assert.equal(client.epoch, "e1");
});

test("events apply once, in order; an overlapping merged delta is trimmed", () => {
  const { client, seen } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  for (const f of [userMsg(1), started(2), delta(3, "Hel"), delta(3, "Hel"), delta(5, "lo wor", 4), delta(6, "Hello world", 3)]) {
    ws.receive(f);
  }
  ws.receive(delta(7, "!"));
  assert.equal(answer(client), "Hello world!");
  assert.deepEqual(seen.events.map((e) => e.seq), [1, 2, 3, 5, 6, 7]);
  assert.equal(seen.events[4].text, "ld", "only the part after seq 5 is delivered");
});

test("a page reload resumes from the stored cursor and shows the partial answer at once", () => {
  const first = setup();
  first.client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  [userMsg(1), started(2), delta(3, "Part")].forEach((f) => ws.receive(f));
  first.client.close(); // as on pagehide

  const second = setup({ storage: first.storage });
  assert.equal(answer(second.client), "Part", "the stored conversation is there before any network");
  second.client.connect();
  const ws2 = FakeWebSocket.last();
  ws2.open();
  assert.deepEqual(ws2.sent[0], { type: "hello", session_id: "s1", last_seq: 3, epoch: "e1" });
  ws2.receive({ type: "welcome", session_id: "s1", epoch: "e1", seq: 5, resume: "replay" });
  [delta(4, "ial"), done(5)].forEach((f) => ws2.receive(f));
  assert.equal(answer(second.client), "Partial");
  assert.equal(second.client.conversation.find("assistant", "t1").status, "done");
});

test("a snapshot replaces the state, and a reset drops the answer so far", () => {
  const { client } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  const messages = [{ role: "user", turn_id: "t1", text: "hi" }];
  welcome(ws, { seq: 4, messages, active: { turn_id: "t1", text: "abc" } });
  assert.equal(answer(client), "abc");
  assert.equal(client.conversation.activeTurnId, "t1");
  ws.receive({ seq: 5, type: "reset", turn_id: "t1", attempt: 2 });
  ws.receive(delta(6, "xyz"));
  assert.equal(answer(client), "xyz");
});

test("a gap opens a resuming connection next to the live one", () => {
  const { client } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  ws.receive(userMsg(1));
  ws.receive(delta(4, "late"));
  assert.equal(FakeWebSocket.all.length, 2, "a replacement is opened");
  const ws2 = FakeWebSocket.last();
  ws2.open();
  assert.equal(ws2.sent[0].last_seq, 1);
  ws2.receive({ type: "welcome", session_id: "s1", epoch: "e1", seq: 4, resume: "replay" });
  assert.equal(ws.readyState, 3, "the old one is closed once the new one is live");
  [started(2), delta(3, "on "), delta(4, "time")].forEach((f) => ws2.receive(f));
  assert.equal(answer(client), "on time");
});

test("a message is re-sent with the same id after a reconnect, until acked", async () => {
  const { client, clock } = setup();
  client.connect();
  const p = client.send("hello");
  const ws = FakeWebSocket.last();
  welcome(ws);
  const [sent] = ws.sentOf("send");
  assert.equal(sent.text, "hello");
  ws.drop(1006);
  assert.equal(client.state, "reconnecting");
  clock.advance(250);
  const ws2 = FakeWebSocket.last();
  assert.equal(ws2.url, "ws://gw2.test/v1/ws?session_id=s1", "the next URL is tried");
  welcome(ws2, { resume: "replay" });
  assert.deepEqual(ws2.sentOf("send"), [sent], "same client_msg_id");
  ws2.receive({ type: "ack", client_msg_id: sent.client_msg_id, turn_id: "t1", seq: 1 });
  assert.deepEqual(await p, { type: "ack", client_msg_id: sent.client_msg_id, turn_id: "t1", seq: 1 });
  assert.deepEqual(client.pending, []);
});

test("attachments go with the send, survive a reload unacked, and stay on the user's message", () => {
  const first = setup();
  first.client.connect();
  const cat = { url: "https://media.test/u/cat.png", content_type: "image/png", name: "cat.png" };
  first.client.send("what is it?", { clientMsgId: "m1", attachments: [cat] });
  first.client.close(); // never sent: the page was closed first

  const second = setup({ storage: first.storage });
  assert.deepEqual(second.client.pending, [{ clientMsgId: "m1", text: "what is it?", attachments: [cat] }]);
  second.client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  assert.deepEqual(ws.sentOf("send"), [{ type: "send", client_msg_id: "m1", text: "what is it?", attachments: [cat] }]);
  ws.receive({ ...userMsg(1, "m1", "what is it?"), attachments: [{ ...cat, size: 0 }] });
  assert.deepEqual(second.client.conversation.find("user", "t1").attachments, [{ ...cat, size: 0 }]);
  second.client.send("no media", { clientMsgId: "m2" });
  assert.equal(ws.sentOf("send")[1].attachments, undefined, "a send without attachments has no field");
});

test("an unacked message is sent again on the same connection after ackTimeoutMs", () => {
  const { client, clock } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  client.send("x");
  clock.advance(9_000);
  assert.equal(ws.sentOf("send").length, 1);
  clock.advance(2_000);
  assert.equal(ws.sentOf("send").length, 2);
  assert.equal(ws.sentOf("send")[0].client_msg_id, ws.sentOf("send")[1].client_msg_id);
});

test("busy rejects the send; a failed cancel before it does not take its error", async () => {
  const { client, seen } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  client.cancel("t0");
  const p = client.send("again");
  ws.receive({ type: "error", code: "not_found", message: "no turn t0" });
  ws.receive({ type: "error", code: "busy", message: "turn t9 is still running", retry_after_ms: 1000 });
  await assert.rejects(p, (e) => e.code === "busy" && e.retryAfterMs === 1000);
  assert.equal(seen.failed.length, 1);
  assert.equal(seen.failed[0].text, "again");
  assert.deepEqual(seen.errors.map((e) => e.code), ["not_found"]);
  assert.deepEqual(client.pending, []);
});

test("reconnect waits grow with full jitter; after 2 failures per URL the next transport starts over", () => {
  const fetches = [];
  const { client, clock } = setup({ client: { fetch: (url) => (fetches.push(url), new Promise(() => {})) } });
  client.connect();
  const waits = [];
  for (let i = 0; i < 4; i++) {
    FakeWebSocket.last().drop(1006);
    waits.push(Math.max(...clock.pendingDelays()));
    clock.advance(waits[i]);
  }
  assert.deepEqual(waits, [500, 1000, 2000, 250]);
  assert.equal(client.transport, "sse");
  assert.equal(FakeWebSocket.all.length, 4);
  assert.deepEqual(fetches, ["http://gw1.test/v1/sessions/s1/events"]);
});

test("a welcomed connection that drops reconnects within the base delay", () => {
  const { client, clock, seen } = setup();
  client.connect();
  welcome(FakeWebSocket.last());
  FakeWebSocket.last().drop(1006);
  assert.deepEqual(clock.pendingDelays(), [250]);
  clock.advance(250);
  welcome(FakeWebSocket.last(), { resume: "replay" });
  assert.deepEqual(seen.states, ["connecting", "live", "reconnecting", "live"]);
});

test("a draining gateway (reconnect frame) is replaced before it closes", () => {
  const { client, seen } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  ws.receive({ type: "reconnect", reason: "draining" });
  const ws2 = FakeWebSocket.last();
  assert.match(ws2.url, /gw2/);
  welcome(ws2, { resume: "replay" });
  assert.equal(ws.readyState, 3);
  assert.deepEqual(seen.states, ["connecting", "live"], "never shown as reconnecting");
});

test("heartbeat pings; a silent server is dropped after idle and pong timeouts", () => {
  const { client, clock } = setup();
  client.connect();
  const ws = FakeWebSocket.last();
  welcome(ws);
  clock.advance(15_000);
  assert.equal(ws.sentOf("ping").length, 1);
  ws.receive({ type: "pong" });
  clock.advance(30_000);
  assert.equal(ws.readyState, 1, "pings alone keep it");
  clock.advance(30_000);
  assert.equal(ws.readyState, 3, "no answer for 45 s plus an unanswered ping");
  assert.equal(client.state, "reconnecting");
});

test("a token goes in the WebSocket URL", () => {
  setup({ client: { token: "t0k" } }).client.connect();
  assert.equal(FakeWebSocket.last().url, "ws://gw1.test/v1/ws?session_id=s1&token=t0k");
});

test("low-power mode raises coalesce_ms and is applied by a make-before-break resume", () => {
  const listeners = {};
  const doc = { visibilityState: "hidden", addEventListener: (t, f) => (listeners[t] = f), removeEventListener() {} };
  const { client, clock, seen } = setup({ client: { lowPower: "auto", powerSource: { document: doc } } });
  client.connect();
  const ws = FakeWebSocket.last();
  ws.open();
  assert.equal(ws.sent[0].coalesce_ms, 1000);
  welcome(ws);
  doc.visibilityState = "visible";
  listeners.visibilitychange();
  clock.advance(1_999);
  assert.equal(FakeWebSocket.all.length, 1, "a short change does not touch the connection");
  clock.advance(1);
  const ws2 = FakeWebSocket.last();
  ws2.open();
  assert.equal(ws2.sent[0].coalesce_ms, undefined);
  ws2.receive({ type: "welcome", session_id: "s1", epoch: "e1", seq: 0, resume: "replay" });
  assert.equal(ws.readyState, 3);
  assert.deepEqual(seen.states, ["connecting", "live"]);
});

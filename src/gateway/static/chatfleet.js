// chatfleet client: one session of protocol v1 (docs/protocol.md), for browsers and other JS
// runtimes with WebSocket/fetch. No dependencies, no build step. Usage: docs/client.md.
//
//   const chat = new ChatClient({ sessionId: "s1", urls: ["https://gw1", "https://gw2"] });
//   chat.addEventListener("change", () => render(chat.conversation));
//   chat.connect();
//   await chat.send("Hello");
//   await chat.send("What is this?", { attachments: [{ url: "https://media.example.com/u/cat.png",
//     content_type: "image/png", size: 183004, name: "cat.png" }] });
//
// What it guarantees: events reach the app once each, in seq order, across reconnects, gateway
// changes, transport fallbacks and page reloads (the seq cursor and the conversation it describes
// are persisted together). A message is re-sent with the same client_msg_id until acked.

import { Conversation, Sequencer } from "./chatfleet/order.js";
import { openLink } from "./chatfleet/transports.js";
import { watchPower } from "./chatfleet/power.js";
import { Outbox } from "./chatfleet/outbox.js";
import { ChatError, ChatEvent, DEFAULTS, defaultStorage, newId, realClock } from "./chatfleet/common.js";
import { loadRecord, saveRecord } from "./chatfleet/persist.js";

export { ChatError, ChatEvent, Conversation, DEFAULTS, Sequencer, newId };

const CONTROL = new Set(["welcome", "snapshot", "ack", "reconnect", "pong"]);
const TERMINAL = new Set(["done", "error", "cancelled"]);

export class ChatClient extends EventTarget {
  constructor(options = {}) {
    super();
    const o = { ...DEFAULTS, ...options };
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(o.sessionId ?? "")) throw new Error("sessionId must be 1-64 of [A-Za-z0-9_.-]");
    this.options = o;
    this.sessionId = o.sessionId;
    this.urls = (o.urls ?? [globalThis.location?.origin]).filter(Boolean);
    if (!this.urls.length) throw new Error("no gateway URL: pass urls");
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._fetch = o.fetch ?? ((...a) => globalThis.fetch(...a));
    this._clock = o.clock ?? realClock;
    this._random = o.random ?? Math.random;
    this._storage = o.storage === undefined ? defaultStorage() : o.storage;
    this._key = `${o.storageKey}:${o.sessionId}`;
    const rec = this._load();
    // The cursor is only worth sending with the conversation it belongs to.
    this.seqr = new Sequencer(rec?.conv ? rec.epoch : null, rec?.conv ? rec.seq : null);
    this.conversation = new Conversation(rec?.conv);
    this.outbox = new Outbox(rec?.outbox);
    this.state = "offline";
    this.transport = o.transports[0];
    this._tIndex = 0;
    this._urlIndex = 0;
    this._failures = 0; // attempts in a row that never got a welcome
    this._tFailures = 0; // the same, on the current transport
    this._everLive = false;
    this._link = null; // the connection in use
    this._next = null; // a connection being opened to replace it (make-before-break)
    this._cancels = new Set(); // cancels waiting for a live connection
    this._dirty = false;
    this._persistedAt = 0;
    this._lowPower = o.lowPower === true;
  }

  /** Highest seq applied, and its epoch. */
  get lastSeq() {
    return this.seqr.seq;
  }
  get epoch() {
    return this.seqr.epoch;
  }
  /** True while low-power mode is on. */
  get lowPower() {
    return this._lowPower;
  }
  /** The coalescing window asked for in the next hello. */
  get coalesceMs() {
    const o = this.options;
    return this._lowPower ? Math.max(o.coalesceMs, o.lowPowerCoalesceMs) : o.coalesceMs;
  }
  /** Messages sent and not acked yet: [{clientMsgId, text, attachments}]. */
  get pending() {
    return this.outbox.list();
  }

  connect() {
    if (this._ticker) return this;
    this._ticker = this._clock.setInterval(() => this._tick(), this.options.tickMs);
    if (this.options.lowPower === "auto") {
      const env = this.options.powerSource ?? { document: globalThis.document, navigator: globalThis.navigator };
      this._power = watchPower(env, (low) => this._setLowPower(low));
      this._lowPower = this._power.lowPower;
    }
    this._onOnline = () => this.reconnect();
    this._onOffline = () => this._setState("offline");
    this._onHide = () => this._persist();
    globalThis.addEventListener?.("online", this._onOnline);
    globalThis.addEventListener?.("offline", this._onOffline);
    globalThis.addEventListener?.("pagehide", this._onHide);
    this._setState("connecting");
    this._link = this._open();
    return this;
  }

  /** Ends every connection and timer; the state becomes "offline". */
  close() {
    this._clock.clearInterval(this._ticker);
    this._clock.clearTimeout(this._retryTimer);
    this._clock.clearTimeout(this._powerTimer);
    this._ticker = this._retryTimer = this._powerTimer = null;
    for (const c of [this._link, this._next]) if (c) this._drop(c);
    this._link = this._next = null;
    this._power?.stop();
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("offline", this._onOffline);
    globalThis.removeEventListener?.("pagehide", this._onHide);
    this._persist();
    this._setState("offline");
  }

  /** Reconnects now (e.g. a "retry" button while offline), skipping the backoff wait. */
  reconnect() {
    if (!this._ticker || this._link?.live) return;
    this._clock.clearTimeout(this._retryTimer);
    if (this._link) this._drop(this._link);
    this._link = this._open();
  }

  /**
   * Sends a user message; resolves with its `ack` ({client_msg_id, turn_id, seq}) or rejects with
   * a ChatError when refused (busy, rate_limited, degraded, too_large, ...). Until then it is
   * re-sent, with the same id, after every reconnect and every ackTimeoutMs. Pass clientMsgId to
   * retry a refused message under its first id.
   *
   * `attachments`: media by reference, [{url, content_type, size?, name?}] (docs/protocol.md,
   * "Attachments"): URLs into storage the app owns, never bytes. The server checks them against
   * its [media] limits; a refusal rejects the send like any other (bad_request, too_large).
   */
  send(text, { clientMsgId, attachments = [] } = {}) {
    const entry = this.outbox.add(clientMsgId ?? newId("m"), text, attachments);
    this._persist();
    this._emit("outbox", { pending: this.pending });
    this._transmit(entry);
    return entry.promise;
  }

  /** Asks the server to stop a turn; a `cancelled` event follows. Queued while disconnected. */
  cancel(turnId) {
    this._cancels.add(turnId);
    this._flushCancels();
  }

  /** Low-power mode: true, false, or "auto" (the default). Applied as described in docs/client.md. */
  setLowPower(mode) {
    this.options.lowPower = mode;
    this._setLowPower(mode === "auto" ? !!this._power?.lowPower : !!mode);
  }

  // ---- connections ----

  _open() {
    const o = this.options;
    const kind = o.transports[this._tIndex];
    const base = this.urls[this._urlIndex % this.urls.length];
    const now = this._clock.now();
    const c = { kind, base, live: false, dead: false, outstanding: [], openedAt: now, lastHeard: now, lastPing: now };
    const ctx = {
      base,
      sessionId: this.sessionId,
      token: o.token,
      hello: () => {
        c.coalesce = this.coalesceMs;
        return { last_seq: this.seqr.seq, epoch: this.seqr.epoch, coalesce_ms: c.coalesce };
      },
      cursor: () => ({ seq: this.seqr.seq, epoch: this.seqr.epoch }),
      WebSocket: this._WebSocket,
      fetch: this._fetch,
      clock: this._clock,
      pollWaitMs: o.pollWaitMs,
      pollGapMs: () => this.coalesceMs,
    };
    const on = {
      frame: (f) => !c.dead && this._onFrame(c, f),
      activity: () => {
        if (!c.dead) c.lastHeard = this._clock.now();
      },
      closed: (e) => !c.dead && this._onClosed(c, e),
      sendFailed: (frame) => !c.dead && frame.type === "send" && this.outbox.unsent(frame.client_msg_id),
    };
    try {
      c.link = openLink(kind, ctx, on);
    } catch {
      // e.g. a URL the WebSocket constructor refuses: a failed attempt like any other.
      c.link = { send: () => false, close() {} };
      this._clock.setTimeout(() => on.closed({ code: 1006, reason: "cannot open" }), 0);
    }
    this.transport = kind;
    return c;
  }

  _drop(c) {
    c.dead = true;
    c.link.close();
    this.outbox.forgetLink(c);
  }

  _onClosed(c, { code }) {
    this._drop(c);
    if (c === this._next) {
      this._next = null; // The replacement failed; the connection in use carries on.
      return;
    }
    if (c !== this._link) return;
    this._link = null;
    if (!c.live) {
      this._failures++;
      this._tFailures++;
      this._maybeFallBack();
    }
    // Draining gateways (1012) and slow-consumer closes (4008) mean "come back now".
    const now = c.live && (code === 1012 || code === 4008 || code === 4000);
    this._scheduleReconnect(now);
  }

  _maybeFallBack() {
    const o = this.options;
    if (this._tFailures < o.failuresBeforeFallback * this.urls.length) return;
    this._tFailures = 0;
    // After the last transport, start over: the failures may have been an outage, not a proxy.
    this._tIndex = (this._tIndex + 1) % o.transports.length;
  }

  _scheduleReconnect(immediate) {
    const o = this.options;
    const offline = globalThis.navigator?.onLine === false || this._failures >= o.offlineAfterFailures;
    this._setState(offline ? "offline" : this._everLive ? "reconnecting" : "connecting");
    this._urlIndex++;
    // The exponent restarts with each transport: a fallback deserves a prompt first try.
    const cap = Math.min(o.backoffMaxMs, o.backoffBaseMs * 2 ** Math.min(this._tFailures, 30));
    const delay = immediate ? 0 : this._random() * cap;
    this._retryTimer = this._clock.setTimeout(() => {
      this._retryTimer = null;
      if (this._ticker && !this._link) this._link = this._open();
    }, delay);
  }

  /** Opens a replacement next to the live connection; it takes over at its welcome. */
  _replace(rotate) {
    if (!this._link?.live || this._next) return;
    if (rotate) this._urlIndex++;
    this._next = this._open();
  }

  _becameLive(c) {
    c.live = true;
    if (c === this._next) {
      const old = this._link;
      this._link = c;
      this._next = null;
      if (old) this._drop(old);
    }
    this._failures = 0;
    this._tFailures = 0;
    this._everLive = true;
    this._setState("live");
    for (const e of this.outbox.entries()) this._transmit(e);
    this._flushCancels();
  }

  // ---- frames ----

  _onFrame(c, f) {
    const isEvent = f.type === "error" ? f.seq !== undefined : !CONTROL.has(f.type);
    if (isEvent) return this._onEvent(c, f);
    switch (f.type) {
      case "welcome":
        if (f.resume === "replay") this.seqr.epoch = f.epoch;
        return this._becameLive(c);
      case "snapshot":
        this.seqr.reset(f.epoch, f.seq);
        this.conversation.loadSnapshot(f);
        this._emit("snapshot", f);
        this._changed(null);
        return this._persist();
      case "ack":
        settle(c, (o) => o.type === "send" && o.id === f.client_msg_id);
        return this._acked(f);
      case "pong":
        return settle(c, (o) => o.type === "ping");
      case "reconnect":
        return this._replace(true);
      case "error":
        return this._onError(c, f);
    }
  }

  _onEvent(c, f) {
    const r = this.seqr.admit(f);
    if (r.kind === "dup") return;
    if (r.kind === "gap") return this._replace(false); // The server fills it from its log.
    const ev = r.ev;
    this.seqr.applied(ev);
    this.conversation.apply(ev);
    // A user_message is as good as an ack: the message is stored (it may be from another tab).
    if (ev.type === "user_message" && this.outbox.has(ev.client_msg_id)) {
      this._acked({ client_msg_id: ev.client_msg_id, turn_id: ev.turn_id, seq: ev.seq });
    }
    this._emit("event", ev);
    this._changed(ev.turn_id);
    if (TERMINAL.has(ev.type)) this._persist();
  }

  _acked(ack) {
    if (this.outbox.resolve(ack)) {
      this._persist();
      this._emit("ack", ack);
      this._emit("outbox", { pending: this.pending });
    }
  }

  _onError(c, err) {
    // HTTP replies name their request; WebSocket replies come in the order of the requests.
    const req = err.for ? { type: err.for.type, id: err.for.client_msg_id, turnId: err.for.turn_id } : takeFor(c, err);
    if (req?.type === "send" && this.outbox.has(req.id)) {
      if (err.code === "unavailable") {
        return this.outbox.retryLater(req.id, this._clock.now() + (err.retry_after_ms ?? 1000));
      }
      const entry = this.outbox.refuse(req.id, new ChatError(err));
      this._persist();
      this._emit("sendfailed", { clientMsgId: entry.id, text: entry.text, code: err.code, message: err.message, retryAfterMs: err.retry_after_ms ?? null });
      this._emit("outbox", { pending: this.pending });
      return;
    }
    this._emit("error", { code: err.code, message: err.message, retryAfterMs: err.retry_after_ms ?? null, turnId: req?.turnId ?? null });
  }

  _transmit(entry) {
    const c = this._link;
    const now = this._clock.now();
    if (!c?.live || entry.link === c || entry.notBefore > now) return;
    const frame = { type: "send", client_msg_id: entry.id, text: entry.text };
    if (entry.attachments?.length) frame.attachments = entry.attachments;
    if (c.link.send(frame)) {
      this.outbox.sent(entry, c, now);
      c.outstanding.push({ type: "send", id: entry.id });
    }
  }

  _flushCancels() {
    const c = this._link;
    if (!c?.live) return;
    for (const turnId of this._cancels) {
      if (!c.link.send({ type: "cancel", turn_id: turnId })) return;
      c.outstanding.push({ type: "cancel", turnId });
      this._cancels.delete(turnId);
    }
  }

  // ---- housekeeping ----

  _tick() {
    const o = this.options;
    const now = this._clock.now();
    for (const c of [this._link, this._next]) {
      if (!c || c.dead) continue;
      if (!c.live) {
        if (now - c.openedAt > o.connectTimeoutMs) this._onClosed(c, { code: 4000 });
        continue;
      }
      const silent = now - c.lastHeard;
      const unanswered = c.lastPing > c.lastHeard ? now - c.lastPing : 0;
      if (c.kind === "ws" && (now - c.lastPing >= o.heartbeatMs || (silent > o.idleTimeoutMs && !unanswered))) {
        c.lastPing = now;
        if (c.link.send({ type: "ping" })) c.outstanding.push({ type: "ping" });
      }
      // A WebSocket is dropped only after a ping went unanswered too: a tab whose timers were
      // throttled must not take its own late tick for a dead server.
      const dead = c.kind === "ws" ? silent > o.idleTimeoutMs && unanswered > o.pongTimeoutMs : silent > o.idleTimeoutMs;
      if (dead) this._onClosed(c, { code: 4000 });
    }
    for (const e of this.outbox.entries()) {
      if (e.link && now - e.sentAt > o.ackTimeoutMs) e.link = null; // Sent again below.
      this._transmit(e);
    }
    if (this._dirty && now - this._persistedAt >= o.persistMs) this._persist();
  }

  _setLowPower(low) {
    if (low === this._lowPower) return;
    this._lowPower = low;
    this._emit("power", { lowPower: low, coalesceMs: this.coalesceMs });
    // Applied by a make-before-break resume, once the change has lasted a little: flipping tabs
    // quickly must not churn connections. Nothing is lost or shown twice (seq rules).
    this._clock.clearTimeout(this._powerTimer);
    this._powerTimer = this._clock.setTimeout(() => {
      const c = this._link;
      if (c?.live && c.kind === "ws" && c.coalesce !== this.coalesceMs) this._replace(false);
    }, this.options.powerSwitchDelayMs);
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", { state, transport: this.transport });
  }

  _changed(turnId) {
    this._dirty = true;
    this._emit("change", { turnId });
  }

  _emit(type, detail) {
    this.dispatchEvent(new ChatEvent(type, detail));
  }

  // ---- persistence: {epoch, seq, conversation} are stored together, or not at all ----

  _load() {
    return loadRecord(this._storage, this._key);
  }

  _persist() {
    this._dirty = false;
    this._persistedAt = this._clock.now();
    const rec = { epoch: this.seqr.epoch, seq: this.seqr.seq, conv: this.conversation.toJSON(), outbox: this.outbox.toJSON() };
    saveRecord(this._storage, this._key, rec);
  }
}

/** Removes the answered request and the silent (successful) cancels before it. */
function settle(c, match) {
  const i = c.outstanding.findIndex(match);
  if (i >= 0) c.outstanding.splice(0, i + 1);
}

/** Codes a cancel can be refused with; any other error belongs to a later request. */
const CANCEL_CODES = new Set(["not_found", "bad_request", "forbidden", "unauthorized", "unavailable"]);

function takeFor(c, err) {
  while (c.outstanding.length) {
    const o = c.outstanding.shift();
    if (o.type !== "cancel" || CANCEL_CODES.has(err.code)) return o;
  }
  return null;
}

// Test doubles for the client: a manual clock, an in-memory WebSocket and storage.

/** Time that moves only when a test says so; timers fire in due order. */
export class FakeClock {
  constructor() {
    this.t = 1_000_000;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms = 0) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, every: null });
    return id;
  }
  setInterval(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + ms, fn, every: ms });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  clearInterval(id) {
    this.timers.delete(id);
  }
  /** Delays of the one-shot timers now pending. */
  pendingDelays() {
    return [...this.timers.values()].filter((t) => t.every === null).map((t) => t.at - this.t);
  }
  /** Moves time forward, firing every timer that falls due on the way. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      if (!next) break;
      const [id, t] = next;
      this.t = t.at;
      if (t.every === null) this.timers.delete(id);
      else t.at += t.every;
      t.fn();
    }
    this.t = end;
  }
}

/** A WebSocket whose server side is the test. `FakeWebSocket.all` lists every one made. */
export class FakeWebSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }
  static reset() {
    FakeWebSocket.all = [];
  }
  static last() {
    return FakeWebSocket.all[FakeWebSocket.all.length - 1];
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }
  /** Frames the client sent, of one type. */
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  /** The server (or the network) ends the socket. */
  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  close(code = 1000) {
    this.closedByClient = code;
    this.drop(code);
  }
}

export class MemoryStorage {
  constructor() {
    this.m = new Map();
  }
  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    this.m.set(k, String(v));
  }
  removeItem(k) {
    this.m.delete(k);
  }
}

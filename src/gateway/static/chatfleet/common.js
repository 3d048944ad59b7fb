// The client's shared pieces: options and their defaults, the event and error types, ids, and
// the real clock (tests pass a fake one).

/** Every option, with its default. Times are milliseconds. */
export const DEFAULTS = Object.freeze({
  urls: null, // gateway base URLs, tried in turn on reconnect; default: the page's origin
  sessionId: null, // required: 1-64 characters of [A-Za-z0-9_.-]
  token: null, // sent as ?token= (WebSocket) and Authorization: Bearer (HTTP)
  transports: ["ws", "sse", "poll"], // tried in this order; the next one after repeated failures
  coalesceMs: 0, // asked in hello: the server merges deltas over this window
  lowPower: "auto", // true, false, or "auto": page hidden or battery low
  lowPowerCoalesceMs: 1000, // the window used while in low-power mode
  powerSwitchDelayMs: 2000, // a power change must last this long before the connection changes
  heartbeatMs: 15000, // app-level ping interval (WebSocket)
  idleTimeoutMs: 45000, // no frame for this long: the link is suspected
  pongTimeoutMs: 10000, // ...and is dropped when a ping stays unanswered this long
  connectTimeoutMs: 10000, // a link not welcomed within this is a failure
  ackTimeoutMs: 10000, // an unacked send is sent again (same id) after this
  backoffBaseMs: 250, // reconnect delay: random(0, min(max, base * 2^failures)), "full jitter"
  backoffMaxMs: 10000,
  failuresBeforeFallback: 2, // per base URL: then the next transport is tried
  offlineAfterFailures: 5, // state "offline" after this many failed attempts in a row
  pollWaitMs: 25000, // long-poll wait_ms
  tickMs: 500, // housekeeping interval (heartbeats, timeouts, retries, persistence)
  persistMs: 1000, // the stored cursor lags by at most this; the end of an answer is stored at once
  storageKey: "chatfleet:v1", // storage key prefix; the session id is appended
  storage: undefined, // {getItem, setItem, removeItem}; default localStorage; null: no persistence
  powerSource: undefined, // {document, navigator} watched by lowPower "auto"; default the globals
  WebSocket: undefined, // the WebSocket class; default the global one
  fetch: undefined, // default the global fetch
  clock: undefined, // {now, setTimeout, clearTimeout, setInterval, clearInterval}; default real time
  random: undefined, // () => [0, 1), for the jitter; default Math.random
});

/** An event whose `detail` carries the payload (CustomEvent is not global in every runtime). */
export class ChatEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

/** A refused request: `code` is a protocol error code (docs/protocol.md, "Error codes"). */
export class ChatError extends Error {
  constructor({ code, message, retry_after_ms }) {
    super(message || code);
    this.code = code;
    this.retryAfterMs = retry_after_ms ?? null;
  }
}

/** A random id usable as session id or client_msg_id. */
export function newId(prefix = "") {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // Blocked by privacy settings: run without persistence.
  }
}

export const realClock = {
  now: () => Date.now(),
  setTimeout: (f, ms) => setTimeout(f, ms),
  clearTimeout: (t) => clearTimeout(t),
  setInterval: (f, ms) => setInterval(f, ms),
  clearInterval: (t) => clearInterval(t),
};

// The three transports of docs/protocol.md behind one shape, a "link":
//
//   link = openLink(kind, ctx, on)   kind: "ws" | "sse" | "poll"
//   link.send(frame)                  a client frame (send, cancel, ping); false if it cannot go now
//   link.close()                      ends it; no callback fires after this
//   on.frame(obj)                     a server frame or event, parsed
//   on.activity()                     anything arrived (including SSE heartbeats)
//   on.closed({code, reason})         it ended by itself (never after link.close())
//
// ctx: {base, sessionId, token, hello() -> {last_seq, epoch, coalesce_ms}, cursor() -> {seq, epoch},
//       WebSocket, fetch, clock, pollWaitMs, pollGapMs()}
//
// SSE is read with fetch and a stream reader rather than EventSource: EventSource cannot send an
// Authorization header and hides the `: hb` comments that tell a quiet stream from a dead one.

export function openLink(kind, ctx, on) {
  if (kind === "ws") return wsLink(ctx, on);
  if (kind === "sse") return sseLink(ctx, on);
  if (kind === "poll") return pollLink(ctx, on);
  throw new Error(`unknown transport ${kind}`);
}

const trimBase = (base) => String(base).replace(/\/+$/, "");
const sessionPath = (ctx) => `${trimBase(ctx.base)}/v1/sessions/${encodeURIComponent(ctx.sessionId)}`;

function authHeaders(ctx, extra = {}) {
  return ctx.token ? { ...extra, Authorization: `Bearer ${ctx.token}` } : extra;
}

function wsLink(ctx, on) {
  const url = new URL(`${trimBase(ctx.base)}/v1/ws`);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("session_id", ctx.sessionId);
  if (ctx.token) url.searchParams.set("token", ctx.token);
  let done = false;
  const ws = new ctx.WebSocket(url.toString());
  const finish = (code, reason) => {
    if (done) return;
    done = true;
    on.closed({ code, reason });
  };
  ws.onopen = () => {
    // Read now, not when the link was made: an older link may have applied more meanwhile.
    const hello = { type: "hello", session_id: ctx.sessionId };
    const h = ctx.hello();
    if (h.last_seq != null && h.epoch) Object.assign(hello, { last_seq: h.last_seq, epoch: h.epoch });
    if (h.coalesce_ms) hello.coalesce_ms = h.coalesce_ms;
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (m) => {
    if (done) return;
    on.activity();
    let frame;
    try {
      frame = JSON.parse(m.data);
    } catch {
      return; // Not ours to act on; the seq rules recover anything that mattered.
    }
    on.frame(frame);
  };
  ws.onerror = () => {}; // A close event always follows, with the code.
  ws.onclose = (e) => finish(e.code, e.reason);
  return {
    kind: "ws",
    send(frame) {
      if (done || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(frame));
      return true;
    },
    close() {
      done = true;
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    },
  };
}

/** Shared by the HTTP transports: send and cancel go over POST. */
function httpCommands(ctx, on, isDone) {
  return async (frame) => {
    if (frame.type === "ping") return true; // HTTP transports have their own liveness.
    const path =
      frame.type === "send"
        ? `${sessionPath(ctx)}/messages`
        : `${sessionPath(ctx)}/turns/${encodeURIComponent(frame.turn_id)}/cancel`;
    const { type, ...fields } = frame; // a send's client_msg_id, text and attachments
    const body = type === "send" ? JSON.stringify(fields) : "";
    const res = await ctx.fetch(path, {
      method: "POST",
      headers: authHeaders(ctx, { "Content-Type": "application/json" }),
      body,
    });
    if (isDone()) return true;
    if (res.ok && frame.type === "send") on.frame(await res.json());
    if (!res.ok) {
      let err = { type: "error", code: "unavailable", message: `HTTP ${res.status}` };
      try {
        err = await res.json();
      } catch {
        /* keep the generic error */
      }
      // HTTP answers are correlated by the request itself; say which frame this refuses.
      on.frame({ ...err, for: frame });
    }
    return true;
  };
}

function sseLink(ctx, on) {
  const abort = new AbortController();
  let done = false;
  const finish = (code, reason) => {
    if (done) return;
    done = true;
    abort.abort();
    on.closed({ code, reason });
  };
  const url = new URL(`${sessionPath(ctx)}/events`);
  const h = ctx.hello();
  if (h.last_seq != null && h.epoch) {
    url.searchParams.set("last_seq", String(h.last_seq));
    url.searchParams.set("epoch", h.epoch);
  }
  (async () => {
    const res = await ctx.fetch(url.toString(), {
      headers: authHeaders(ctx, { Accept: "text/event-stream" }),
      cache: "no-store",
      signal: abort.signal,
    });
    if (!res.ok || !res.body) return finish(res.status, "refused");
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let data = [];
    for (;;) {
      const { value, done: eof } = await reader.read();
      if (eof || done) break;
      on.activity();
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (data.length) dispatch(data.join("\n"));
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
        // `id:` repeats the event's seq and `event: control` its type; both are in the JSON.
      }
    }
    finish(1006, "stream ended");
  })().catch(() => finish(1006, "network error"));

  function dispatch(text) {
    if (done) return;
    try {
      on.frame(JSON.parse(text));
    } catch {
      /* not JSON: ignore, as for WebSocket */
    }
  }
  const post = httpCommands(ctx, on, () => done);
  return {
    kind: "sse",
    send(frame) {
      if (done) return false;
      post(frame).catch(() => on.sendFailed?.(frame));
      return true;
    },
    close() {
      done = true;
      abort.abort();
    },
  };
}

function pollLink(ctx, on) {
  const abort = new AbortController();
  let done = false;
  let welcomed = false;
  const finish = (code, reason) => {
    if (done) return;
    done = true;
    abort.abort();
    on.closed({ code, reason });
  };
  async function once() {
    const cur = ctx.cursor();
    const url = new URL(`${sessionPath(ctx)}/events`);
    if (cur.seq != null && cur.epoch) {
      url.searchParams.set("after", String(cur.seq));
      url.searchParams.set("epoch", cur.epoch);
    }
    url.searchParams.set("wait_ms", String(welcomed ? ctx.pollWaitMs : 0));
    // Bounded: the server answers within wait_ms; a request that hangs past that is dead.
    const timer = ctx.clock.setTimeout(() => abort.abort(), ctx.pollWaitMs + 10000);
    try {
      const res = await ctx.fetch(url.toString(), {
        headers: authHeaders(ctx, { Accept: "application/json" }),
        cache: "no-store",
        signal: abort.signal,
      });
      if (!res.ok) return finish(res.status, "refused");
      const body = await res.json();
      if (done) return;
      on.activity();
      const snap = body.snapshot;
      if (!welcomed) {
        welcomed = true;
        const seq = snap ? snap.seq : body.seq;
        on.frame({ type: "welcome", session_id: ctx.sessionId, epoch: snap ? snap.epoch : body.epoch, seq, resume: snap ? "snapshot" : "replay" });
      }
      if (snap) on.frame({ type: "snapshot", ...snap });
      for (const ev of body.events ?? []) on.frame(ev);
    } finally {
      ctx.clock.clearTimeout(timer);
    }
  }
  (async () => {
    while (!done) {
      await once();
      // A low-power client waits between polls, so the events of that window come in one answer.
      const gap = ctx.pollGapMs();
      if (gap > 0 && !done) await new Promise((r) => ctx.clock.setTimeout(r, gap));
    }
  })().catch(() => finish(1006, "network error"));
  const post = httpCommands(ctx, on, () => done);
  return {
    kind: "poll",
    send(frame) {
      if (done) return false;
      post(frame).catch(() => on.sendFailed?.(frame));
      return true;
    },
    close() {
      done = true;
      abort.abort();
    },
  };
}

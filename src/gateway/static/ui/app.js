// The chat page: wires chatfleet.js to the sidebar, the transcript and the composer.
//
// Page options (query string): `gw=<url>,<url>` lists gateways to use, tried in turn on
// reconnect; only http(s) URLs on this page's host are accepted, so a link cannot point the page
// at someone else's server. Default: this page's origin.

import { ChatClient, newId } from "/chatfleet.js";
import { Announcer } from "./announce.js";
import { Sessions } from "./sessions.js";
import { View, attachmentName, humanError } from "./view.js";

const $ = (id) => document.getElementById(id);
const STATE_TEXT = { connecting: "Connecting…", live: "Connected", reconnecting: "Reconnecting…", offline: "Offline" };
const TRANSPORT_TEXT = { ws: "WebSocket", sse: "server-sent events", poll: "long-polling" };

function gateways() {
  const raw = new URLSearchParams(location.search).get("gw");
  const ok = (raw ?? "").split(",").filter((u) => {
    try {
      const url = new URL(u);
      return /^https?:$/.test(url.protocol) && url.hostname === location.hostname;
    } catch {
      return false;
    }
  });
  return ok.length ? ok : [location.origin];
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

const sessions = new Sessions(storage(), () => newId("s"));
const announcer = new Announcer($("announcer"));
const view = new View($("messages"), { announcer, scroller: $("transcript"), onRetryTurn: retryTurn });
let client = null;
let acked = []; // acks whose user_message is not shown yet: keeps the bubble from blinking
let lastFailed = null;

function open(sessionId) {
  client?.close();
  view.clear();
  acked = [];
  hideNotice();
  sessions.select(sessionId);
  client = new ChatClient({ sessionId, urls: gateways() });
  client.addEventListener("change", () => refresh());
  client.addEventListener("outbox", () => refresh());
  client.addEventListener("ack", (e) => {
    acked.push({ clientMsgId: e.detail.client_msg_id, turnId: e.detail.turn_id });
    refresh();
  });
  client.addEventListener("state", (e) => showState(e.detail.state, e.detail.transport));
  client.addEventListener("power", (e) => ($("power").hidden = !e.detail.lowPower));
  client.addEventListener("sendfailed", (e) => {
    lastFailed = e.detail;
    // A refused attachment's reason (type, storage, count) is the server's, and safe to show.
    const words = e.detail.code === "bad_request" && e.detail.message ? `That message was refused: ${e.detail.message}` : humanError(e.detail.code, e.detail.retryAfterMs);
    showNotice(words, retryFailed, e.detail.retryAfterMs);
  });
  client.addEventListener("error", (e) => {
    if (e.detail.code !== "not_found") showNotice(humanError(e.detail.code, e.detail.retryAfterMs));
  });
  client.connect();
  $("power").hidden = !client.lowPower;
  refresh();
  renderSessions();
}

let wasActive = false;

/** Refreshes the sidebar from the server's archive, when it has one. */
function syncSessions() {
  sessions.sync(gateways()[0]).then((synced) => synced && renderSessions());
}

function refresh() {
  const conv = client.conversation;
  const shown = new Set(conv.messages.filter((m) => m.role === "user").map((m) => m.turn_id));
  acked = acked.filter((a) => !shown.has(a.turnId));
  const waiting = client.pending.map((p) => ({ ...p, turnId: null }));
  view.schedule(conv, [...waiting, ...acked.map((a) => ({ ...a, ...sentOf(a.clientMsgId) }))]);
  const active = !!conv.activeTurnId;
  // A turn just ended: the archive may now list this chat (or a new title).
  if (wasActive && !active) syncSessions();
  wasActive = active;
  $("send").hidden = active;
  $("stop").hidden = !active;
  $("empty").hidden = conv.messages.length > 0 || client.pending.length > 0;
  const first = conv.messages.find((m) => m.role === "user");
  if (first && sessions.title(client.sessionId, first.text)) renderSessions();
  $("title").textContent = first ? sessions.items.find((s) => s.id === client.sessionId)?.title : "New chat";
}

const sent = new Map(); // client_msg_id -> {text, attachments}
const sentOf = (id) => sent.get(id) ?? { text: "", attachments: [] };

function send(text, clientMsgId = newId("m"), attachments = []) {
  hideNotice();
  sent.set(clientMsgId, { text, attachments });
  client.send(text, { clientMsgId, attachments }).catch(() => {}); // shown by the "sendfailed" handler
}

function retryFailed() {
  if (lastFailed) send(lastFailed.text, lastFailed.clientMsgId, sentOf(lastFailed.clientMsgId).attachments);
  lastFailed = null;
}

/** Retry of a failed answer: the user's message of that turn, sent again as a new message. */
function retryTurn(turnId) {
  const user = client.conversation.find("user", turnId);
  if (user) send(user.text, newId("m"), user.attachments ?? []);
}

// ---- attach by URL: references to media the product stores; the page never uploads ----

let attached = []; // [{url, content_type, name}] for the next message

function renderAttached() {
  const ul = $("attached");
  ul.replaceChildren(
    ...attached.map((a, i) => {
      const li = document.createElement("li");
      li.textContent = `${attachmentName(a)} (${a.content_type}) `;
      const b = document.createElement("button");
      b.type = "button";
      b.className = "icon";
      b.textContent = "✕";
      b.setAttribute("aria-label", `Remove ${attachmentName(a)}`);
      b.addEventListener("click", () => {
        attached.splice(i, 1);
        renderAttached();
        $("text").focus();
      });
      li.append(b);
      return li;
    }),
  );
  ul.hidden = attached.length === 0;
}

function toggleAttach(show = $("attach").hidden) {
  $("attach").hidden = !show;
  $("attach-toggle").setAttribute("aria-expanded", String(show));
  if (show) $("attach-url").focus();
}

function addAttachment() {
  const url = $("attach-url").value.trim();
  const type = $("attach-type").value.trim().toLowerCase();
  let ok = false;
  try {
    ok = /^https?:$/.test(new URL(url).protocol);
  } catch {
    ok = false;
  }
  if (!ok || !type) {
    showNotice("Give the attachment's http(s) URL and its type, e.g. image/png.");
    return;
  }
  hideNotice();
  const a = { url, content_type: type };
  a.name = attachmentName(a);
  attached.push(a);
  $("attach-url").value = "";
  renderAttached();
  toggleAttach(false);
  $("text").focus();
}

$("attach-toggle").addEventListener("click", () => toggleAttach());
$("attach-add").addEventListener("click", addAttachment);
$("attach-url").addEventListener("keydown", (e) => {
  if (e.key === "Enter") {
    e.preventDefault();
    addAttachment();
  }
});

function showState(state, transport) {
  const el = $("conn");
  el.dataset.state = state;
  el.querySelector(".label").textContent = STATE_TEXT[state];
  el.title = state === "live" ? `Connected via ${TRANSPORT_TEXT[transport]}` : STATE_TEXT[state];
}

function showNotice(message, retry, retryAfterMs) {
  $("notice-text").textContent = message;
  const b = $("notice-retry");
  b.hidden = !retry;
  b.onclick = () => {
    hideNotice();
    retry();
  };
  // A retry before the server's retry_after_ms would only be refused again.
  b.disabled = !!retryAfterMs;
  if (retryAfterMs) setTimeout(() => (b.disabled = false), retryAfterMs);
  $("notice").hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

function renderSessions() {
  const ul = $("sessions");
  ul.replaceChildren(
    ...sessions.items.map((s) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = s.title || "New chat";
      b.dataset.session = s.id;
      if (s.id === client?.sessionId) b.setAttribute("aria-current", "page");
      b.addEventListener("click", () => {
        if (s.id !== client.sessionId) open(s.id);
        closeSidebar();
        $("text").focus();
      });
      li.append(b);
      return li;
    }),
  );
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  if (client.conversation.activeTurnId) {
    showNotice(humanError("busy"));
    return;
  }
  send(text, newId("m"), attached);
  attached = [];
  renderAttached();
  $("text").value = "";
  autosize();
});

function autosize() {
  const t = $("text");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 240)}px`;
}

$("text").addEventListener("input", autosize);
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && document.body.classList.contains("sidebar-open")) {
    closeSidebar();
    $("toggle-sidebar").focus();
  } else if (e.key === "Escape" && client.conversation.activeTurnId) {
    e.preventDefault();
    stop();
  }
});

function stop() {
  const turn = client.conversation.activeTurnId;
  if (turn) client.cancel(turn);
  $("text").focus();
}

$("stop").addEventListener("click", stop);
$("new-chat").addEventListener("click", () => {
  const empty = client.conversation.messages.length === 0 && client.pending.length === 0;
  if (!empty) open(sessions.create());
  closeSidebar();
  $("text").focus();
});
$("full-mode").addEventListener("change", (e) => {
  view.fullMode = e.target.checked;
  storage()?.setItem("chatfleet.page:full", view.fullMode ? "1" : "");
  refresh();
});
$("toggle-sidebar").addEventListener("click", () => {
  const openNow = document.body.classList.toggle("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", String(openNow));
  // After the style change has applied: a hidden element cannot take focus.
  if (openNow) requestAnimationFrame(() => $("new-chat").focus());
});
$("notice-close").addEventListener("click", hideNotice);

view.fullMode = storage()?.getItem("chatfleet.page:full") === "1";
$("full-mode").checked = view.fullMode;
open(sessions.current());
syncSessions();
$("text").focus();

// Renders a conversation (chatfleet.js's model) into the transcript, at most once per animation
// frame however many deltas arrive, and redrawing only what changed: a message whose rev moved,
// and in it only the Markdown blocks whose HTML changed.

import { StreamingMarkdown, blockElement, speechText } from "./markdown.js";

const STATUS_TEXT = { cancelled: "Stopped", error: "The answer failed" };
const TOOL_TEXT = { running: "Running", done: "Finished", failed: "Failed", timed_out: "Timed out" };

/** What a person is told when an answer or a message fails, by protocol error code. */
export function humanError(code, retryAfterMs) {
  const wait = retryAfterMs ? ` Try again in ${Math.max(1, Math.round(retryAfterMs / 1000))} s.` : "";
  switch (code) {
    case "busy":
      return "I'm still answering your previous message. Wait for it to finish or stop it, then retry.";
    case "rate_limited":
      return `You're sending messages too quickly.${wait || " Wait a moment, then retry."}`;
    case "degraded":
      return `The service is very busy right now.${wait || " Please retry in a moment."}`;
    case "unavailable":
      return "The service can't be reached right now. Please retry.";
    case "too_large":
      return "That message is too long. Please shorten it.";
    default:
      return "Something went wrong with this answer. Please retry.";
  }
}

export class View {
  /**
   * @param {HTMLElement} list the <ol> of messages
   * @param {{announcer, onRetryTurn(turnId), scroller: HTMLElement}} hooks
   */
  constructor(list, hooks) {
    this.list = list;
    this.doc = list.ownerDocument;
    this.hooks = hooks;
    this.nodes = new Map(); // "role:turn_id" -> {el, rev, blocks: [key], status}
    this.fullMode = false;
    this.frame = 0;
    this.conv = null;
    this.pending = [];
  }

  /** Asks for a render on the next frame; any number of calls make one render. */
  schedule(conv, pending) {
    this.conv = conv;
    if (pending) this.pending = pending;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  /** A new session: forget every node; the first render shows what is there without speaking. */
  clear() {
    this.nodes.clear();
    this.list.replaceChildren();
    this.quiet = true;
  }

  render() {
    this.frame = 0;
    const { scroller } = this.hooks;
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    const seen = new Set();
    let k = 0;
    for (const m of this.conv.messages) {
      const key = `${m.role}:${m.turn_id}`;
      seen.add(key);
      const el = this.message(key, m);
      if (this.list.children[k] !== el) this.list.insertBefore(el, this.list.children[k] ?? null);
      k++;
    }
    const shownTurns = new Set(this.conv.messages.filter((m) => m.role === "user").map((m) => m.turn_id));
    for (const p of this.pending) {
      if (p.turnId && shownTurns.has(p.turnId)) continue;
      const key = `pending:${p.clientMsgId}`;
      seen.add(key);
      const el = this.message(key, { role: "user", text: p.text, attachments: p.attachments, status: "sending", rev: 0 });
      if (this.list.children[k] !== el) this.list.insertBefore(el, this.list.children[k] ?? null);
      k++;
    }
    for (const [key, n] of this.nodes) {
      if (!seen.has(key)) {
        n.el.remove();
        this.nodes.delete(key);
      }
    }
    this.quiet = false;
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  /** The element of one message, updated if its rev moved. */
  message(key, m) {
    let n = this.nodes.get(key);
    if (!n) {
      const el = this.doc.createElement("li");
      el.className = `msg ${m.role}`;
      el.dataset.role = m.role;
      const who = this.doc.createElement("span");
      who.className = "sr-only";
      who.textContent = m.role === "user" ? "You said:" : "Assistant said:";
      const body = this.doc.createElement("div");
      body.className = "body";
      const meta = this.doc.createElement("div");
      meta.className = "meta";
      el.append(who, body, meta);
      n = { el, body, meta, rev: -1, blocks: [], full: null, md: new StreamingMarkdown() };
      this.nodes.set(key, n);
      if (this.quiet && m.role === "assistant") this.hooks.announcer.skip(m.turn_id, speechText(m.text, textState(m)));
    }
    if (n.rev === m.rev && n.full === this.fullMode) return n.el;
    const revChanged = n.rev !== m.rev;
    n.rev = m.rev;
    n.full = this.fullMode;
    if (m.turn_id) n.el.dataset.turn = m.turn_id;
    n.el.dataset.status = m.status ?? "";
    const streaming = m.status === "streaming";
    n.el.setAttribute("aria-busy", String(streaming));
    if (m.role === "user") {
      n.body.textContent = m.text;
      this.attachments(n, m.attachments);
    } else if (streaming && this.fullMode) this.placeholder(n);
    else this.markdown(n, n.md.blocks(m.text, textState(m)));
    this.meta(n, m);
    if (m.role === "assistant" && revChanged) this.speak(n, m, streaming);
    return n.el;
  }

  /**
   * Replaces only the blocks whose HTML changed, so finished text never moves or flickers and a
   * selection in it survives the stream.
   */
  markdown(n, blocks) {
    if (n.blocks === null) {
      n.body.replaceChildren(); // leaving the full-answer placeholder
      n.blocks = [];
    }
    blocks.forEach((html, i) => {
      if (n.blocks[i] === html) return;
      const el = blockElement(html, this.doc);
      const old = n.body.children[i];
      if (old) old.replaceWith(el);
      else n.body.append(el);
      n.blocks[i] = html;
    });
    while (n.body.children.length > blocks.length) n.body.lastElementChild.remove();
    n.blocks.length = blocks.length;
  }

  /**
   * A user message's attachments, as links showing name and type. Never as <img>: the page must
   * not make the browser fetch a URL someone put in a conversation (a tracking pixel, a request
   * to an internal host); a link is fetched only when the person follows it. Only http(s) URLs
   * become links, so a `javascript:` URL typed into the composer cannot run.
   */
  attachments(n, list) {
    n.atts?.remove();
    n.atts = null;
    if (!list?.length) return;
    const ul = this.doc.createElement("ul");
    ul.className = "attachments";
    ul.setAttribute("aria-label", "Attachments");
    for (const a of list) {
      const li = this.doc.createElement("li");
      const label = `${attachmentName(a)} (${a.content_type})`;
      if (/^https?:\/\//i.test(a.url)) {
        const link = this.doc.createElement("a");
        link.href = a.url;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        link.textContent = label;
        li.append(link);
      } else li.textContent = label;
      ul.append(li);
    }
    n.body.after(ul);
    n.atts = ul;
  }

  placeholder(n) {
    if (n.blocks === null) return;
    n.blocks = null;
    const p = this.doc.createElement("p");
    p.className = "writing";
    p.textContent = "Writing the full answer…";
    n.body.replaceChildren(p);
  }

  meta(n, m) {
    const parts = [];
    if (m.status === "sending") parts.push(text(this.doc, "Sending…"));
    for (const [name, state] of Object.entries(m.tools ?? {})) {
      const t = text(this.doc, `${TOOL_TEXT[state] ?? state}: ${name}`, `tool tool-${state}`);
      parts.push(t);
    }
    if (STATUS_TEXT[m.status]) parts.push(text(this.doc, STATUS_TEXT[m.status], "status"));
    if (m.status === "error") {
      parts.push(text(this.doc, humanError(m.error?.code), "error"));
      const b = this.doc.createElement("button");
      b.type = "button";
      b.className = "retry";
      b.textContent = "Retry";
      b.addEventListener("click", () => this.hooks.onRetryTurn(m.turn_id));
      parts.push(b);
    }
    n.meta.replaceChildren(...parts);
    n.meta.hidden = parts.length === 0;
  }

  /**
   * Phrase-level speech while an answer streams; in full-answer mode, the whole answer once when
   * it is complete. Only answers seen streaming are spoken: history is not read out on load.
   */
  speak(n, m, streaming) {
    if (streaming) n.streamed = true;
    if (!n.streamed || (this.fullMode && streaming)) return;
    this.hooks.announcer.progress(m.turn_id, n.md.speech(m.text, textState(m)), !streaming);
    if (!streaming) n.streamed = false;
  }
}

/** An attachment's display name: its name, else the last segment of its URL's path. */
export function attachmentName(a) {
  if (a.name) return a.name;
  try {
    const last = new URL(a.url).pathname.split("/").pop();
    return decodeURIComponent(last) || a.url;
  } catch {
    return a.url;
  }
}

/** How far an answer's text got (markdown.js's settle): still coming, cut short, or whole. */
function textState(m) {
  if (m.status === "streaming") return "streaming";
  return m.status === "cancelled" || m.status === "error" ? "ended" : "done";
}

function text(doc, s, cls = "") {
  const el = doc.createElement("span");
  el.className = cls;
  el.textContent = s;
  return el;
}

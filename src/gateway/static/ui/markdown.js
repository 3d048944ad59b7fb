// A small, safe Markdown subset for model output: paragraphs, **strong**, *em*/_em_, `code`,
// fenced code blocks, lists, and links to http(s) only. Everything becomes DOM nodes whose text is
// set with textContent: model text is never parsed as HTML, so `<script>` shows as text.
//
// Streaming stability: text is split into blocks, and a renderer redraws only blocks whose source
// changed (normally the last one). In the last block of a streaming answer an opened `**`, `_` or
// backtick is treated as running to the end, so markers do not flash as text and then vanish.

const FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+.-]*)\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

/** Splits Markdown into blocks: {type: "p", text} | {type: "code", lang, text, closed} | {type: "list", ordered, start, items}. */
export function parseBlocks(src) {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const blocks = [];
  let cur = null;
  const end = () => (cur = null);
  for (const line of lines) {
    if (cur?.type === "code") {
      if (line.trim().startsWith(cur.fence) && line.trim().replace(/[`~]/g, "") === "") {
        cur.closed = true;
        end();
      } else cur.lines.push(line);
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      cur = { type: "code", fence: fence[1], lang: fence[2], lines: [], closed: false };
      blocks.push(cur);
      continue;
    }
    if (line.trim() === "") {
      end();
      continue;
    }
    const item = ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[2]);
      if (cur?.type !== "list" || cur.ordered !== ordered) {
        cur = { type: "list", ordered, start: ordered ? parseInt(item[2], 10) : 1, items: [] };
        blocks.push(cur);
      }
      cur.items.push(item[3]);
      continue;
    }
    if (cur?.type === "list") {
      cur.items[cur.items.length - 1] += "\n" + line.trim(); // continuation of the last item
    } else if (cur?.type === "p") {
      cur.text += "\n" + line;
    } else {
      cur = { type: "p", text: line };
      blocks.push(cur);
    }
  }
  return blocks.map((b) => (b.type === "code" ? { type: "code", lang: b.lang, text: b.lines.join("\n"), closed: b.closed } : b));
}

/** http(s) URLs only, normalised; anything else (javascript:, data:, relative) gives null. */
export function safeUrl(raw) {
  try {
    const u = new URL(raw);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

const alnum = (c) => c !== undefined && /[\p{L}\p{N}]/u.test(c);
const LINK = /^\[([^\]\n]+)\]\(([^()\s]+)\)/;
const AUTOLINK = /^https?:\/\/[^\s<>]*[^\s<>.,;:!?)\]'"]/;

/**
 * Inline nodes: {t: "text", v} | {t: "code", v} | {t: "strong"|"em", c: nodes} | {t: "a", href, c} | {t: "br"}.
 * With open=true, an emphasis or code span that is not closed yet runs to the end of the text.
 */
export function parseInline(s, open = false) {
  const out = [];
  let text = "";
  const flush = () => {
    if (text) out.push({ t: "text", v: text });
    text = "";
  };
  for (let i = 0; i < s.length; ) {
    const c = s[i];
    const rest = s.slice(i);
    if (c === "`") {
      const run = /^`+/.exec(rest)[0];
      const close = s.indexOf(run, i + run.length);
      if (close > 0 || open) {
        flush();
        out.push({ t: "code", v: s.slice(i + run.length, close > 0 ? close : s.length) });
        i = close > 0 ? close + run.length : s.length;
        continue;
      }
      text += run;
      i += run.length;
      continue;
    }
    if (c === "*" || c === "_") {
      const d = s[i + 1] === c ? c + c : c;
      const after = s[i + d.length];
      // An opener touches the following word and, for "_", does not sit inside one (snake_case).
      const canOpen = after !== undefined && !/\s/.test(after) && !(c === "_" && alnum(s[i - 1]));
      const close = canOpen ? findCloser(s, i + d.length, d) : -1;
      if (close > 0 || (canOpen && open && !s.slice(i + d.length).includes(d))) {
        flush();
        const inner = s.slice(i + d.length, close > 0 ? close : s.length);
        out.push({ t: d.length === 2 ? "strong" : "em", c: parseInline(inner, open && close < 0) });
        i = close > 0 ? close + d.length : s.length;
        continue;
      }
      text += d;
      i += d.length;
      continue;
    }
    if (c === "[") {
      const m = LINK.exec(rest);
      const href = m && safeUrl(m[2]);
      if (href) {
        flush();
        out.push({ t: "a", href, c: parseInline(m[1]) });
        i += m[0].length;
        continue;
      }
    }
    if (c === "h" && !alnum(s[i - 1])) {
      const m = AUTOLINK.exec(rest);
      const href = m && safeUrl(m[0]);
      if (href) {
        flush();
        out.push({ t: "a", href, c: [{ t: "text", v: m[0] }] });
        i += m[0].length;
        continue;
      }
    }
    if (c === "\n") {
      flush();
      out.push({ t: "br" });
      i++;
      continue;
    }
    text += c;
    i++;
  }
  flush();
  return out;
}

/** The closing delimiter `d` after `from`: not preceded by a space, and "_" not inside a word. */
function findCloser(s, from, d) {
  for (let j = s.indexOf(d, from + 1); j > 0; j = s.indexOf(d, j + 1)) {
    if (/\s/.test(s[j - 1])) continue;
    if (d[0] === "_" && alnum(s[j + d.length])) continue;
    if (d.length === 1 && s[j + 1] === d) {
      j++; // part of a "**" run: not a single closer
      continue;
    }
    return j;
  }
  return -1;
}

/** DOM for inline nodes, built with createElement and textContent only. */
export function inlineToDom(nodes, doc) {
  const frag = doc.createDocumentFragment();
  for (const n of nodes) {
    if (n.t === "text") frag.append(doc.createTextNode(n.v));
    else if (n.t === "br") frag.append(doc.createElement("br"));
    else if (n.t === "code") {
      const el = doc.createElement("code");
      el.textContent = n.v;
      frag.append(el);
    } else {
      const el = doc.createElement(n.t);
      if (n.t === "a") {
        el.href = n.href;
        el.rel = "noopener noreferrer nofollow ugc";
        el.target = "_blank";
      }
      el.append(inlineToDom(n.c, doc));
      frag.append(el);
    }
  }
  return frag;
}

/** One block's element. `open` marks the still-growing last block of a streaming answer. */
export function blockToDom(b, doc, open = false) {
  if (b.type === "code") {
    const pre = doc.createElement("pre");
    const code = doc.createElement("code");
    if (b.lang) code.dataset.lang = b.lang;
    code.textContent = b.text;
    pre.append(code);
    return pre;
  }
  if (b.type === "list") {
    const el = doc.createElement(b.ordered ? "ol" : "ul");
    if (b.ordered && b.start !== 1) el.start = b.start;
    b.items.forEach((item, k) => {
      const li = doc.createElement("li");
      li.append(inlineToDom(parseInline(item, open && k === b.items.length - 1), doc));
      el.append(li);
    });
    return el;
  }
  const p = doc.createElement("p");
  p.append(inlineToDom(parseInline(b.text, open), doc));
  return p;
}

/** Plain text of Markdown, for speech: the markers go, the words stay. */
export function toPlain(src) {
  const flat = (nodes) => nodes.map((n) => (n.t === "br" ? "\n" : n.v ?? flat(n.c))).join("");
  return parseBlocks(src)
    .map((b) => (b.type === "code" ? b.text : b.type === "list" ? b.items.map((i) => flat(parseInline(i))).join("\n") : flat(parseInline(b.text))))
    .join("\n\n");
}

// Model answers as Markdown, rendered by markdown-it (CommonMark plus GitHub tables and
// strikethrough), vendored in /vendor/markdown-it/ at the version web/vendor-markdown-it pins
// (15.0.3; run that script to refresh it).
//
// Safety: raw HTML in the model's text is off (`html: false`), so `<script>` or `<img onerror>`
// is escaped and shows as text; markdown-it's renderer escapes every text and attribute, which is
// why its output may be parsed as HTML here. Links are http(s) and mailto only and open in a new
// tab without access to this page. Images are off: a model (or a prompt injection) could
// otherwise make the browser fetch any URL, with chat content in its query, just by answering.
//
// Streaming: an answer is cut into its top-level blocks, and the view redraws only the blocks
// whose HTML changed. While an answer streams, `settle` shows what is settled: emphasis and code
// opened in the last paragraph run to its end (markers never flash as text), and lines that may
// still become a table header or a code fence wait until the next line decides. A block that
// another block follows is finished, so StreamingMarkdown parses only from the last block on.

import markdownit from "../vendor/markdown-it/markdown-it.esm.min.mjs";

const md = markdownit("default", { html: false, linkify: true, typographer: false });
// Only text with a scheme becomes a link: "README.md" or "node.js" stay words.
md.linkify.set({ fuzzyLink: false, fuzzyEmail: false, fuzzyIP: false });
md.disable("image");
md.validateLink = (url) => safeUrl(url) !== null;
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  tokens[idx].attrSet("target", "_blank");
  tokens[idx].attrSet("rel", "noopener noreferrer nofollow ugc");
  return self.renderToken(tokens, idx, options);
};

/** http(s) and mailto URLs only; anything else (javascript:, data:, relative) gives null. */
export function safeUrl(raw) {
  try {
    const u = new URL(raw);
    return ["http:", "https:", "mailto:"].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

const lf = (src) => src.replace(/\r\n?/g, "\n");

/**
 * How an answer's text is shown, by how it ended: "done" as written; "ended" (stopped or
 * failed midway) with open emphasis and code closed; "streaming" also holds back the lines the
 * next line may still turn into a table header or a fence.
 */
export function settle(src, state = "done") {
  src = lf(src);
  if (state === "done") return src;
  let lines = src.split("\n");
  if (state === "streaming") {
    // Markers alone (a list item, quote, heading, rule, fence or underline begun) wait for the
    // text that tells which.
    if (MARKERS_ONLY.test(lines[lines.length - 1])) lines.pop();
    // A paragraph's trailing "|" lines are a table header until a delimiter row says otherwise.
    const last = lastInline(md.parse(lines.join("\n"), {}));
    if (last?.paragraph) {
      const complete = lines[lines.length - 1] === ""; // the text ends with one line break
      let cut = lines.length - (complete ? 1 : 0);
      while (cut > last.line && /^[\s>]*\|/.test(lines[cut - 1])) cut--;
      if (cut < lines.length - (complete ? 1 : 0)) lines = lines.slice(0, cut);
    }
  }
  const text = lines.join("\n");
  const last = lastInline(md.parse(text, {}));
  if (!last) return text;
  const head = lines.slice(0, last.line).join("\n");
  return head + (last.line > 0 ? "\n" : "") + closeInline(lines.slice(last.line).join("\n"));
}

const MARKERS_ONLY = /^(?=.*\S)\s*(?:[-*+>#=_~`\s]+|\d{1,9}[.)]?\s*)$/;

/** The source line where the last inline run (paragraph, heading, cell) starts, if text ends in one. */
function lastInline(tokens) {
  let i = tokens.length - 1;
  while (i >= 0 && tokens[i].nesting === -1) i--;
  if (i < 0 || tokens[i].type !== "inline") return null; // ends in a code block, a rule, or nothing
  const paragraph = tokens[i - 1]?.type === "paragraph_open";
  for (let j = i; j >= 0; j--) if (tokens[j].map) return { line: tokens[j].map[0], paragraph };
  return null;
}

const alnum = (c) => c !== undefined && /[\p{L}\p{N}]/u.test(c);
const space = (c) => c === undefined || /\s/.test(c);

/**
 * Closes the emphasis, strikethrough and code spans still open at the end of `s` (right after
 * its last character, where a closer counts), drops an opener that nothing follows yet, and shows
 * a link still being written as its text alone.
 */
export function closeInline(s) {
  s = unfinishedLinks(s);
  const stack = []; // open delimiters: {run, end}
  let code = null; // the open code span's backtick run and where its content starts
  let idle = null; // where the last delimiter run starts, when it neither opened nor closed
  for (let i = 0; i < s.length; ) {
    const c = s[i];
    let n = 1;
    while (s[i + n] === c && (c === "`" || c === "*" || c === "_" || c === "~")) n++;
    const run = s.slice(i, i + n);
    if (c === "`") {
      if (!code) code = { run, end: i + n };
      else if (code.run === run) code = null;
    } else if (code) {
      // inside a code span everything is literal
    } else if (c === "\\") {
      n = 2; // an escaped character is literal
    } else if ((c === "*" || c === "_" || (c === "~" && n === 2)) && n <= 3) {
      const before = s[i - 1];
      const after = s[i + n];
      const inWord = c === "_" && alnum(before) && alnum(after); // snake_case
      const top = stack[stack.length - 1];
      idle = null;
      if (!inWord && !space(before) && top?.run === run) stack.pop();
      else if (!inWord && !space(after)) stack.push({ run, end: i + n });
      else idle = i;
    }
    i += n;
  }
  // A run at the very end that neither opened nor closed (half a closer, or an opener with
  // nothing after it yet) waits for the next character.
  let body = s.trimEnd();
  const tail = s.slice(body.length);
  if (idle !== null && /^[*_~]+$/.test(body.slice(idle))) body = body.slice(0, idle).trimEnd();
  const close = ({ run, end }) => {
    body = end >= body.length ? body.slice(0, end - run.length).trimEnd() : body + run;
  };
  if (code) close(code);
  while (stack.length) close(stack.pop());
  return body + tail;
}

/** `s` without the brackets of links not finished yet, nor the part of their URL written so far. */
function unfinishedLinks(s) {
  const open = []; // where each "[" not closed yet is
  let code = null;
  for (let i = 0; i < s.length; ) {
    const c = s[i];
    let n = 1;
    if (c === "`") {
      while (s[i + n] === "`") n++;
      const run = s.slice(i, i + n);
      if (!code) code = run;
      else if (code === run) code = null;
    } else if (code) {
      // literal
    } else if (c === "\\") {
      n = 2;
    } else if (c === "[") {
      open.push(i);
    } else if (c === "]" && open.length) {
      const start = open.pop();
      const pending = s[i + 1] === "(" ? !s.includes(")", i + 2) : i + 1 === s.trimEnd().length;
      if (pending) return unfinishedLinks(s.slice(0, start) + s.slice(start + 1, i));
    }
    i += n;
  }
  for (const k of open.reverse()) s = s.slice(0, k) + s.slice(k + 1);
  return s;
}

/** The tokens of each top-level block, in order. */
function blocksOf(tokens) {
  const out = [];
  for (let i = 0; i < tokens.length; ) {
    let j = i;
    if (tokens[i].nesting === 1) {
      let depth = 0;
      do depth += tokens[j++].nesting;
      while (depth > 0 && j < tokens.length);
    } else j++;
    out.push(tokens.slice(i, j));
    i = j;
  }
  return out;
}

const html = (block) => md.renderer.render(block, md.options, {}).trim();

/** The HTML of each top-level block of `src`, in order (each is one element). */
export function renderBlocks(src) {
  return blocksOf(md.parse(lf(src), {})).map(html);
}

/**
 * One message's Markdown while it streams, parsed incrementally: a top-level block that another
 * block follows is finished (appended text can only change the last block), so its HTML and
 * words are kept, and each update parses only the text from the last block on. Same output as
 * `renderBlocks(settle(src, state))` and `speechText(src, state)`, at a cost that does not grow
 * with the answer. Finished answers are parsed whole (a late reference definition may change an
 * earlier link).
 */
export class StreamingMarkdown {
  constructor() {
    this.reset();
  }

  reset() {
    this.src = ""; // the finished blocks' source, ending with a line break
    this.html = [];
    this.plain = [];
  }

  /** The HTML of each top-level block of `src`, shown as `state` says (see settle). */
  blocks(src, state) {
    src = lf(src);
    if (state !== "streaming") return renderBlocks(settle(src, state));
    if (!src.startsWith(this.src)) this.reset(); // the text was replaced (a retry)
    const tail = src.slice(this.src.length);
    const blocks = blocksOf(md.parse(settle(tail, state), {}));
    if (blocks.length > 1) {
      const last = blocks[blocks.length - 1][0].map[0];
      this.src += tail.split("\n").slice(0, last).join("\n") + "\n";
      for (const b of blocks.slice(0, -1)) {
        this.html.push(html(b));
        this.plain.push(plainLines(b).join("\n"));
      }
      return [...this.html, html(blocks[blocks.length - 1])];
    }
    return [...this.html, ...blocks.map(html)];
  }

  /** What is spoken of `src` so far (see speechText); call after blocks() with the same text. */
  speech(src, state) {
    src = lf(src);
    if (state !== "streaming" || !src.startsWith(this.src)) return speechText(src, state);
    return [...this.plain, speechText(src.slice(this.src.length), state)].join("\n");
  }
}

/** An element from renderBlocks' HTML (markdown-it escaped it: see the note at the top). */
export function blockElement(html, doc) {
  const t = doc.createElement("template");
  t.innerHTML = html;
  if (t.content.childElementCount === 1) return t.content.firstElementChild;
  const div = doc.createElement("div");
  div.append(t.content);
  return div;
}

/**
 * The words a reader sees, for speech: one line per paragraph, heading, table row or code block,
 * and nothing after the last, so a growing answer's text only ever grows at the end.
 */
export function toPlain(src) {
  return plainLines(md.parse(lf(src), {})).join("\n");
}

function plainLines(tokens) {
  const lines = [];
  let row = null;
  for (const t of tokens) {
    if (t.type === "tr_open") row = [];
    else if (t.type === "tr_close") {
      lines.push(row.filter(Boolean).join(" "));
      row = null;
    } else if (t.type === "fence" || t.type === "code_block") lines.push(t.content.replace(/\n$/, ""));
    else if (t.type === "inline") {
      const text = t.children.map((c) => (c.type === "softbreak" || c.type === "hardbreak" ? "\n" : c.type === "text" || c.type === "code_inline" ? c.content : "")).join("");
      if (row) row.push(text.trim());
      else lines.push(text);
    }
  }
  return lines;
}

/**
 * What is spoken of an answer so far. While it streams, the line being written counts only when
 * it is prose that the next line cannot restructure (no table, fence or underline in the making),
 * so what has been spoken stays a prefix of what is spoken later.
 */
export function speechText(src, state = "done") {
  src = lf(src);
  if (state === "streaming") {
    const nl = src.lastIndexOf("\n");
    const line = src.slice(nl + 1);
    if (!SAFE_LINE.test(line) || line.includes("|")) src = src.slice(0, nl + 1);
  }
  return toPlain(settle(src, state));
}

/**
 * List, quote and heading markers, then a word, emphasis, code or a bracket; a number only once
 * it is clearly not an ordered list's marker being typed.
 */
const SAFE_LINE = /^\s{0,3}(?:(?:[-*+]|\d{1,9}[.)]|>|#{1,6})\s+)*(?:[\p{L}*_"'([]|\p{N}+(?=[^\p{N}.)])|`(?!`))/u;

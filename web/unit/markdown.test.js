// The page's Markdown: structure from the vendored markdown-it, no HTML or unsafe link from model
// text, a streaming answer shown without flashing markers, and speech that says every word once.
import test from "node:test";
import assert from "node:assert/strict";
import { StreamingMarkdown, closeInline, renderBlocks, safeUrl, settle, speechText, toPlain } from "../../src/gateway/static/ui/markdown.js";
import { Announcer } from "../../src/gateway/static/ui/announce.js";

const DOC = [
  "## How do *leases* work?",
  "",
  "The **Demo model** answers _with care_, see `seq`:",
  "",
  "- Gateways hold the sockets.",
  "- Workers claim turns — résumé 🚀, naïve café 日本語.",
  "",
  "> A quote, with **strong** words;",
  "> and a second line.",
  "",
  "```toml",
  "[redis]",
  "partitions = 64  # p07",
  "```",
  "",
  "| stage | where | bounded by |",
  "|---|---|---|",
  "| queue | Redis Stream | `session.log_max_events` |",
  "| fan-out | gateway | per-socket send queue |",
  "",
  "1. First step, then",
  "2. the second.",
  "",
  "Read [the docs](https://example.com/docs) or https://example.com/x.",
  "",
].join("\n");

test("headings, lists, quotes, fenced code and tables become their elements, one block each", () => {
  const html = renderBlocks(DOC);
  assert.deepEqual(
    html.map((h) => /^<(\w+)/.exec(h)[1]),
    ["h2", "p", "ul", "blockquote", "pre", "table", "ol", "p"],
  );
  assert.equal(html[0], "<h2>How do <em>leases</em> work?</h2>");
  assert.equal(html[4], '<pre><code class="language-toml">[redis]\npartitions = 64  # p07\n</code></pre>');
  assert.match(html[5], /<th>bounded by<\/th>[\s\S]*<td><code>session.log_max_events<\/code><\/td>/);
});

test("HTML in model text is escaped, never markup", () => {
  const html = renderBlocks("# <script>alert(1)</script>\n\n_<img src=x onerror=alert(2)>_ <b onclick=x>b</b>").join("");
  assert.equal(html, "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1><p><em>&lt;img src=x onerror=alert(2)&gt;</em> &lt;b onclick=x&gt;b&lt;/b&gt;</p>");
});

test("links are http(s) or mailto, open in a new tab without the opener; images are not loaded", () => {
  assert.equal(safeUrl("javascript:alert(1)"), null);
  assert.equal(safeUrl("data:text/html,<b>"), null);
  assert.equal(safeUrl("/relative"), null);
  assert.equal(safeUrl("mailto:a@example.com"), "mailto:a@example.com");
  assert.deepEqual(renderBlocks("[x](javascript:alert(1)) [y](vbscript:z) [z](/local)"), ["<p>[x](javascript:alert(1)) [y](vbscript:z) [z](/local)</p>"]);
  // An image is a link to click, not a request the answer makes by itself.
  assert.deepEqual(renderBlocks("![i](https://example.com/t.png?q=secret)"), [
    '<p>!<a href="https://example.com/t.png?q=secret" target="_blank" rel="noopener noreferrer nofollow ugc">i</a></p>',
  ]);
  assert.deepEqual(renderBlocks("see [docs](https://example.com/d), https://example.com/x. and README.md"), [
    '<p>see <a href="https://example.com/d" target="_blank" rel="noopener noreferrer nofollow ugc">docs</a>, ' +
      '<a href="https://example.com/x" target="_blank" rel="noopener noreferrer nofollow ugc">https://example.com/x</a>. and README.md</p>',
  ]);
});

test("while streaming, open emphasis and code run to the end and an opener alone waits", () => {
  assert.equal(settle("The **Demo", "streaming"), "The **Demo**");
  assert.equal(settle("The **Demo ", "streaming"), "The **Demo** ");
  assert.equal(settle("answers _How do", "streaming"), "answers _How do_");
  assert.equal(settle("see `se", "streaming"), "see `se`");
  assert.equal(settle("The **", "streaming"), "The");
  assert.equal(settle("snake_case_na", "streaming"), "snake_case_na");
  assert.equal(settle("5 * 3 and a_b", "streaming"), "5 * 3 and a_b");
  assert.equal(settle("- one\n- **tw", "streaming"), "- one\n- **tw**");
  assert.equal(closeInline("`a*b` *c"), "`a*b` *c*");
  assert.equal(settle("Read [the do", "streaming"), "Read the do");
  assert.equal(settle("Read [the docs](https://exa", "streaming"), "Read the docs");
  assert.equal(settle("Read [the docs](https://example.com) and `a[i", "streaming"), "Read [the docs](https://example.com) and `a[i`");
  assert.equal(settle("**Demo", "done"), "**Demo", "a finished answer shows what was written");
  assert.equal(settle("**Demo", "ended"), "**Demo**", "a stopped answer closes what it opened");
});

test("while streaming, a table header and a fence wait for the line that decides them", () => {
  const head = "Intro\n\n| stage | where |\n";
  assert.equal(settle(head, "streaming"), "Intro\n");
  assert.equal(settle(`${head}|--`, "streaming"), "Intro\n");
  assert.deepEqual(renderBlocks(settle(`${head}|---|---|\n| queue | Re`, "streaming")).map((h) => /^<(\w+)/.exec(h)[1]), ["p", "table"]);
  assert.equal(settle("text\n\n``", "streaming"), "text\n");
  assert.equal(settle("| stage | where |", "ended"), "| stage | where |", "a stopped answer hides nothing");
});

test("plain text for speech keeps the words and drops the markup", () => {
  assert.equal(
    toPlain(DOC),
    [
      "How do leases work?",
      "The Demo model answers with care, see seq:",
      "Gateways hold the sockets.",
      "Workers claim turns — résumé 🚀, naïve café 日本語.",
      "A quote, with strong words;\nand a second line.",
      "[redis]\npartitions = 64  # p07",
      "stage where bounded by",
      "queue Redis Stream session.log_max_events",
      "fan-out gateway per-socket send queue",
      "First step, then",
      "the second.",
      "Read the docs or https://example.com/x.",
    ].join("\n"),
  );
});

/** The text of every announcement when `pieces` stream in, as the view feeds the announcer. */
function announce(pieces) {
  const said = [];
  const region = {
    childElementCount: 0,
    ownerDocument: { createElement: () => ({}) },
    append(p) {
      said.push(p.textContent);
    },
  };
  const a = new Announcer(region);
  const md = new StreamingMarkdown();
  let text = "";
  for (const p of pieces) {
    text += p;
    md.blocks(text, "streaming");
    a.progress("t1", md.speech(text, "streaming"), false);
  }
  md.blocks(text, "done");
  a.progress("t1", md.speech(text, "done"), true);
  return said;
}

const words = (s) => s.split(/\s+/).filter(Boolean).join(" ");

test("a streamed answer is spoken a phrase at a time, every word once, however it is cut", () => {
  const tokens = DOC.match(/\S+\s*/g);
  for (const [how, pieces] of [["by token", tokens], ["by character", [...DOC]], ["in threes", DOC.match(/[\s\S]{1,3}/gu)]]) {
    const said = announce(pieces);
    assert.equal(words(said.join(" ")), words(toPlain(DOC)), how);
    assert.ok(said.length >= 8 && said.length * 3 <= pieces.length, `${how}: ${said.length} announcements`);
  }
});

test("a streaming answer only ever shows words of the finished one, in order, however it is cut", () => {
  const finished = words(toPlain(DOC));
  for (const [how, pieces] of [["by token", DOC.match(/\S+\s*/g)], ["by character", [...DOC]]]) {
    let text = "";
    for (const p of pieces) {
      text += p;
      const shown = words(toPlain(settle(text, "streaming")));
      assert.ok(finished.startsWith(shown), `${how}: after ${JSON.stringify(text.slice(-20))} shows ${JSON.stringify(shown.slice(-30))}`);
    }
  }
});

test("incremental rendering of a stream shows and speaks what a whole parse of each prefix does", () => {
  for (const [how, pieces] of [["by token", DOC.match(/\S+\s*/g)], ["by character", [...DOC]]]) {
    const md = new StreamingMarkdown();
    let text = "";
    for (const p of pieces) {
      text += p;
      assert.deepEqual(md.blocks(text, "streaming"), renderBlocks(settle(text, "streaming")), `${how}: ${JSON.stringify(text.slice(-20))}`);
      // Equal but for a line break at the end (a finished block's end, spoken a little sooner).
      const trim = (t) => t.replace(/\n+$/, "");
      assert.equal(trim(md.speech(text, "streaming")), trim(speechText(text, "streaming")), how);
    }
    assert.ok(md.html.length >= 7, `${how}: finished blocks are kept (${md.html.length})`);
    assert.deepEqual(md.blocks(text, "done"), renderBlocks(DOC));
  }
  const md = new StreamingMarkdown();
  md.blocks("# One\n\nTwo", "streaming");
  assert.deepEqual(md.blocks("# Re", "streaming"), ["<h1>Re</h1>"], "a reset answer starts over");
});

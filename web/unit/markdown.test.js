// The Markdown subset: structure, streaming tolerance, and that nothing becomes markup or a bad link.
import test from "node:test";
import assert from "node:assert/strict";
import { parseBlocks, parseInline, safeUrl, toPlain } from "../../src/gateway/static/ui/markdown.js";

test("paragraphs, lists and fenced code split into blocks", () => {
  const b = parseBlocks("Hello\nworld\n\n- a\n- b\n\n1. one\n2. two\n\n```js\nlet x = `<b>`;\n```\ntail");
  assert.deepEqual(b.map((x) => x.type), ["p", "list", "list", "code", "p"]);
  assert.equal(b[0].text, "Hello\nworld");
  assert.deepEqual(b[1].items, ["a", "b"]);
  assert.equal(b[2].ordered, true);
  assert.deepEqual(b[3], { type: "code", lang: "js", text: "let x = `<b>`;", closed: true });
});

test("an unclosed fence while streaming is already a code block", () => {
  assert.deepEqual(parseBlocks("```\nfn main() {"), [{ type: "code", lang: "", text: "fn main() {", closed: false }]);
});

test("emphasis, strong, code, and snake_case left alone", () => {
  assert.deepEqual(parseInline("**Demo model** answering: _hi there_ `x*y` snake_case_name 5 * 3"), [
    { t: "strong", c: [{ t: "text", v: "Demo model" }] },
    { t: "text", v: " answering: " },
    { t: "em", c: [{ t: "text", v: "hi there" }] },
    { t: "text", v: " " },
    { t: "code", v: "x*y" },
    { t: "text", v: " snake_case_name 5 * 3" },
  ]);
});

test("while streaming an opened marker runs to the end instead of showing", () => {
  assert.deepEqual(parseInline("**Dem", true), [{ t: "strong", c: [{ t: "text", v: "Dem" }] }]);
  assert.deepEqual(parseInline("**Dem", false), [{ t: "text", v: "**Dem" }]);
});

test("HTML in model text stays text", () => {
  const nodes = parseInline("_<script>alert(1)</script><img src=x onerror=alert(2)>_");
  assert.deepEqual(nodes, [{ t: "em", c: [{ t: "text", v: "<script>alert(1)</script><img src=x onerror=alert(2)>" }] }]);
});

test("links are http(s) only", () => {
  assert.equal(safeUrl("javascript:alert(1)"), null);
  assert.equal(safeUrl("data:text/html,<b>"), null);
  assert.equal(safeUrl("/relative"), null);
  assert.equal(safeUrl("https://example.com/a b"), "https://example.com/a%20b");
  assert.deepEqual(parseInline("[x](javascript:alert(1))"), [{ t: "text", v: "[x](javascript:alert(1))" }]);
  assert.deepEqual(parseInline("see [docs](https://example.com/d)."), [
    { t: "text", v: "see " },
    { t: "a", href: "https://example.com/d", c: [{ t: "text", v: "docs" }] },
    { t: "text", v: "." },
  ]);
  assert.deepEqual(parseInline("at https://example.com/x."), [
    { t: "text", v: "at " },
    { t: "a", href: "https://example.com/x", c: [{ t: "text", v: "https://example.com/x" }] },
    { t: "text", v: "." },
  ]);
});

test("plain text for speech drops the markers", () => {
  assert.equal(toPlain("**Demo model** answering: _hi_\n\n- a\n- `b`"), "Demo model answering: hi\n\na\nb");
});

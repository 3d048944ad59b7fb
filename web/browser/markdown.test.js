// What models write, on the chat page in headless Chromium: answers come from a real
// OpenAI-compatible upstream (./upstream.js) through the real worker and gateway, and are rendered
// by the vendored markdown-it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startSystem } from "./system.js";
import { startUpstream } from "./upstream.js";
import { launch, lastAnswer, openPage, sendMessage, waitAnswer, words } from "./helpers.js";

const RICH = [
  "# Release notes",
  "",
  "Version **2** streams _faster_; see [the guide](https://example.com/guide).",
  "",
  "> Quoted from the changelog:",
  "> every answer is stored.",
  "",
  "```rust",
  "fn main() {",
  '    println!("<b>hi</b>");',
  "}",
  "```",
  "",
  "| part | role |",
  "|------|------|",
  "| gateway | sockets |",
  "| worker | turns |",
  "",
  "- one",
  "- two",
].join("\n");
/** What a reader of RICH sees, word by word. */
const RICH_SEEN =
  'Release notes Version 2 streams faster; see the guide. Quoted from the changelog: every answer is stored. fn main() { println!("<b>hi</b>"); } part role gateway sockets worker turns one two';

/** Markup and script a model (or a prompt injection) might write. `pixel` is a URL to watch. */
const hostile = (pixel) =>
  [
    `Try <img src=x onerror="window.__pwned='img'"> and <script>window.__pwned='script'</script> now.`,
    "",
    `<iframe src="javascript:window.__pwned='iframe'"></iframe>`,
    "",
    `[click me](javascript:window.__pwned='link') <a href="javascript:window.__pwned='a'">a</a>`,
    "",
    `![tracker](${pixel})`,
  ].join("\n");

let sys;
let upstream;
let browser;
before(async () => {
  upstream = await startUpstream((prompt) => (prompt.startsWith("hostile") ? hostile(`${upstream.url}/pixel.png`) : RICH), { chunkChars: 4, everyMs: 30 });
  sys = await startSystem({ name: "markdown", gateways: 1, env: upstream.env("writer") });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
  await upstream?.close();
});

/** Records the answer's visible text after every change to the transcript. */
async function recordFrames(page) {
  await page.evaluate(() => {
    window.__frames = [];
    new MutationObserver(() => {
      const body = [...document.querySelectorAll("li.msg.assistant .body")].pop();
      if (body) window.__frames.push(body.innerText);
    }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
  });
}

test("headings, emphasis, links, quotes, fenced code, tables and lists render as elements, stably", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await recordFrames(page);
  await sendMessage(page, "Release notes please");
  const answer = lastAnswer(page);
  // Finished blocks (those another block follows) are never redrawn: elements marked
  // mid-stream are still there at the end.
  await answer.locator(".body > p").waitFor();
  await answer.locator(".body h1").evaluate((el) => (el.dataset.mark = "seen"));
  await answer.locator(".body pre").waitFor();
  await answer.locator(".body blockquote").evaluate((el) => (el.dataset.mark = "seen"));
  const shown = await waitAnswer(page);

  assert.equal(words(shown), RICH_SEEN);
  assert.equal(await answer.locator(".body > h1[data-mark=seen]").innerText(), "Release notes");
  assert.equal(words(await answer.locator(".body > blockquote[data-mark=seen]").innerText()), "Quoted from the changelog: every answer is stored.");
  assert.equal(await answer.locator(".body strong").innerText(), "2");
  assert.equal(await answer.locator(".body em").innerText(), "faster");
  assert.equal(await answer.locator(".body > pre > code").textContent(), 'fn main() {\n    println!("<b>hi</b>");\n}\n');
  assert.deepEqual(await answer.locator(".body > table th").allInnerTexts(), ["part", "role"]);
  assert.deepEqual(await answer.locator(".body > table td").allInnerTexts(), ["gateway", "sockets", "worker", "turns"]);
  assert.deepEqual(await answer.locator(".body > ul > li").allInnerTexts(), ["one", "two"]);
  const link = answer.locator(".body a");
  assert.equal(await link.innerText(), "the guide");
  assert.equal(await link.getAttribute("href"), "https://example.com/guide");
  assert.equal(await link.getAttribute("target"), "_blank");
  assert.match(await link.getAttribute("rel"), /(^| )noopener( |$)/);
  assert.match(await link.getAttribute("rel"), /(^| )noreferrer( |$)/);

  // While it streamed, the reader saw only words of the answer, in order: no marker shown then
  // taken back, no table header as a line of pipes.
  const frames = await page.evaluate(() => window.__frames);
  assert.ok(frames.length >= 10, `${frames.length} frames`);
  for (const f of frames) assert.ok(RICH_SEEN.startsWith(words(f)), `mid-stream: ${JSON.stringify(f)}`);
  assert.deepEqual(rec.errors, []);
  await context.close();
});

test("HTML and script in an answer show as text and never run; images are not fetched", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await sendMessage(page, "hostile markup");
  const shown = await waitAnswer(page);
  assert.ok(shown.includes(`Try <img src=x onerror="window.__pwned='img'"> and <script>window.__pwned='script'</script> now.`), shown);
  assert.ok(shown.includes(`<iframe src="javascript:window.__pwned='iframe'"></iframe>`), shown);
  assert.ok(shown.includes(`[click me](javascript:window.__pwned='link')`), shown);
  const markup = "#messages img, #messages script, #messages iframe, #messages [onerror], #messages [onclick], #messages a[href^='javascript']";
  assert.equal(await page.locator(markup).count(), 0);
  // The image became a link to click, so the answer made no request of its own.
  assert.equal(await lastAnswer(page).locator(".body a").getAttribute("href"), `${upstream.url}/pixel.png`);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.deepEqual(upstream.seen.filter((r) => r.includes("pixel")), []);
  assert.deepEqual(rec.dialogs, []);
  assert.deepEqual(rec.errors, []);
  await context.close();
});

test("a refresh mid-answer shows the rendered partial answer, then exactly the whole one", async () => {
  const { page, context } = await openPage(browser, `${sys.urls[0]}/`);
  await sendMessage(page, "Release notes again");
  await lastAnswer(page).locator(".body blockquote").waitFor();
  await page.reload();
  const first = await page.waitForFunction(() => {
    const el = [...document.querySelectorAll("li.msg.assistant")].pop();
    return el && { status: el.dataset.status, text: el.querySelector(".body").innerText, h1: !!el.querySelector(".body > h1") };
  });
  const partial = await first.jsonValue();
  assert.equal(partial.status, "streaming");
  assert.ok(partial.h1, "the partial answer is rendered, not raw");
  assert.ok(RICH_SEEN.startsWith(words(partial.text)), `a prefix of the answer: ${partial.text}`);
  const shown = await waitAnswer(page);
  assert.equal(words(shown), RICH_SEEN, "no word lost or repeated");
  assert.equal(await lastAnswer(page).locator(".body > table td").count(), 4);
  await context.close();
});

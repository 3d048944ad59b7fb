// Losing things mid-answer: a gateway process, the WebSocket transport, then SSE as well.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startSystem } from "./system.js";
import { launch, openPage, screenshot, sendMessage, streamedAnswer, visible, waitAnswer, waitPartial, words } from "./helpers.js";

let sys;
let browser;
let reference; // an uninterrupted run's raw answer to PROMPT
const PROMPT = "Keep going whatever happens";

before(async () => {
  sys = await startSystem({ name: "failover", gateways: 2 });
  browser = await launch();
  const { page, rec, context } = await openPage(browser, `${sys.urls[1]}/`);
  await sendMessage(page, PROMPT);
  await waitAnswer(page);
  reference = streamedAnswer(rec.frames).text;
  await context.close();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
});

/** Records every value the connection indicator takes. */
const watchStates = (page) =>
  page.evaluate(() => {
    const el = document.getElementById("conn");
    window.__states = [el.dataset.state];
    new MutationObserver(() => window.__states.push(el.dataset.state)).observe(el, { attributes: true, attributeFilter: ["data-state"] });
  });

test("WebSocket refused: the page falls back to SSE and answers in full", async () => {
  const setup = (page) => page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
  const { page, context } = await openPage(browser, `${sys.urls[1]}/`, { setup });
  assert.equal(await page.locator("#conn").getAttribute("title"), "Connected via server-sent events");
  await sendMessage(page, PROMPT);
  await waitPartial(page, 3);
  assert.equal(words(await waitAnswer(page)), visible(reference));
  await context.close();
});

test("WebSocket and SSE refused: the page falls back to long-polling and answers in full", async () => {
  const setup = async (page) => {
    await page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
    await page.route(/\/v1\/sessions\/[^/]+\/events/, (route) =>
      (route.request().headers().accept ?? "").includes("text/event-stream") ? route.abort() : route.continue(),
    );
  };
  const { page, context } = await openPage(browser, `${sys.urls[1]}/`, { setup });
  assert.equal(await page.locator("#conn").getAttribute("title"), "Connected via long-polling");
  await sendMessage(page, PROMPT);
  assert.equal(words(await waitAnswer(page)), visible(reference));
  await context.close();
});

// Last: it kills a gateway.
test("a gateway killed mid-answer: reconnecting, then live on the other, and the exact answer", async () => {
  const [gw1, gw2] = sys.urls;
  const { page, rec, context } = await openPage(browser, `${gw1}/?gw=${gw1},${gw2}`);
  await watchStates(page);
  await sendMessage(page, PROMPT);
  await waitPartial(page, 8);
  sys.gw[0].kill("SIGKILL");
  const shown = await waitAnswer(page);
  const states = await page.evaluate(() => window.__states);
  const r = states.indexOf("reconnecting");
  assert.ok(r > 0 && states.indexOf("live", r) > r, `states: ${states.join(" > ")}`);
  assert.equal(words(shown), visible(reference), "no word lost or repeated");
  assert.ok(rec.sockets.some((u) => u.startsWith(gw2.replace("http", "ws"))), "resumed on the second gateway");
  await screenshot(page, "failover");
  await context.close();
});

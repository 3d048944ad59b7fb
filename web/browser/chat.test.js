// The chat page in headless Chromium against the real system (redis, worker, gateways).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startSystem } from "./system.js";
import { launch, lastAnswer, openPage, screenshot, sendMessage, streamedAnswer, visible, waitAnswer, waitPartial, words } from "./helpers.js";

let sys;
let browser;
before(async () => {
  sys = await startSystem({ name: "chat", gateways: 1 });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
});

test("an answer streams in and shows exactly the text the server streamed", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await sendMessage(page, "How does chatfleet stream answers?");
  await waitPartial(page, 3);
  const shown = await waitAnswer(page);
  const { text } = streamedAnswer(rec.frames);
  assert.equal(words(shown), visible(text));
  assert.equal(await page.locator("li.msg.user .body").innerText(), "How does chatfleet stream answers?");
  assert.equal(await lastAnswer(page).locator("strong").innerText(), "Demo model", "Markdown is rendered");
  assert.equal(await lastAnswer(page).locator(".body > h2").innerText(), "How does chatfleet stream answers?");
  assert.equal(await lastAnswer(page).locator(".body > ul > li").count(), 3);
  assert.match(await lastAnswer(page).locator(".body > pre > code").textContent(), /^\[redis\]\npartitions = 64/);
  assert.equal(await page.locator("#sessions button[aria-current]").innerText(), "How does chatfleet stream answers?");
  assert.deepEqual(rec.errors, []);
  await screenshot(page, "chat");
  await context.close();
});

test("stop ends the answer mid-way and keeps the partial text", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await sendMessage(page, "Please stop me early");
  await waitPartial(page, 8);
  await page.locator("#stop").click();
  const shown = await waitAnswer(page, "cancelled");
  const { text, deltas } = streamedAnswer(rec.frames, "cancelled");
  assert.equal(words(shown), visible(text));
  assert.ok(deltas < 70, `stopped early (${deltas} deltas)`);
  assert.equal(await lastAnswer(page).locator(".meta .status").innerText(), "Stopped");
  assert.ok(await page.locator("#send").isVisible(), "Send is back");
  await context.close();
});

test("a refresh mid-answer shows the partial answer at once, then exactly the rest", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  const prompt = "Refresh me in the middle";
  await sendMessage(page, prompt);
  await waitAnswer(page);
  const reference = streamedAnswer(rec.frames).text; // an uninterrupted run of the same prompt

  await page.locator("#new-chat").click();
  await sendMessage(page, prompt);
  await waitPartial(page, 8);
  await page.reload();
  // The first paint after the reload: the stored partial answer, before the rest arrives.
  const first = await page.waitForFunction(() => {
    const el = [...document.querySelectorAll("li.msg.assistant")].pop();
    return el && { status: el.dataset.status, text: el.querySelector(".body").innerText };
  });
  const partial = await first.jsonValue();
  assert.equal(partial.status, "streaming");
  assert.ok(visible(reference).startsWith(words(partial.text)), "a prefix of the answer");
  assert.ok(words(partial.text).split(" ").length >= 8);
  const shown = await waitAnswer(page);
  assert.equal(words(shown), visible(reference), "no word lost or repeated");
  await context.close();
});

test("HTML in a model answer renders as text: no element, no script", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  const evil = "<script>alert(1)</script><img src=x onerror=alert(2)>";
  await sendMessage(page, evil);
  const shown = await waitAnswer(page);
  assert.ok(shown.includes(evil), "the markup is visible as text");
  assert.equal(await page.locator("#messages script, #messages img, #messages [onerror]").count(), 0);
  assert.equal(await page.locator("li.msg.user .body").innerText(), evil);
  assert.deepEqual(rec.dialogs, []);
  assert.deepEqual(rec.errors, []);
  await context.close();
});

test("streamed text reaches the aria-live region a phrase at a time", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await page.evaluate(() => {
    window.__said = [];
    const region = document.querySelector("[aria-live=polite]#announcer");
    new MutationObserver((ms) => ms.forEach((m) => m.addedNodes.forEach((n) => window.__said.push(n.textContent)))).observe(region, { childList: true, subtree: true, characterData: true });
  });
  await sendMessage(page, "Speak to me");
  await waitAnswer(page);
  const { text, deltas } = streamedAnswer(rec.frames);
  const said = await page.evaluate(() => window.__said);
  assert.ok(said.length >= 3, `several updates (${said.length})`);
  assert.ok(said.length * 3 <= deltas, `${said.length} updates for ${deltas} deltas`);
  assert.equal(words(said.join(" ")), visible(text), "every word is spoken once");
  await context.close();
});

test("full-answer mode shows the answer only when complete, and speaks it once", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await page.locator("#full-mode").check();
  await sendMessage(page, "All at once please");
  await page.locator('li.msg.assistant[data-status="streaming"] .writing').waitFor();
  await page.evaluate(() => {
    window.__said = [];
    new MutationObserver((ms) => ms.forEach((m) => m.addedNodes.forEach((n) => window.__said.push(n.textContent)))).observe(document.getElementById("announcer"), { childList: true });
  });
  const shown = await waitAnswer(page);
  assert.equal(words(shown), visible(streamedAnswer(rec.frames).text));
  assert.equal((await page.evaluate(() => window.__said)).length, 1);
  await context.close();
});

test("keyboard only: send with Enter, stop with Esc, chats reachable, switching keeps each chat", async () => {
  const { page, context } = await openPage(browser, `${sys.urls[0]}/`);
  assert.equal(await page.evaluate(() => document.activeElement.id), "text", "the message box has focus");
  await page.keyboard.type("First chat");
  await page.keyboard.press("Enter");
  await waitPartial(page, 5);
  await page.keyboard.press("Escape");
  await waitAnswer(page, "cancelled");
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Shift+Tab");
  // From the message box backwards: the notice is hidden, the toggles come next, then the chats.
  for (let i = 0; i < 10 && (await page.evaluate(() => document.activeElement.id)) !== "new-chat"; i++) {
    await page.keyboard.press("Shift+Tab");
  }
  assert.equal(await page.evaluate(() => document.activeElement.id), "new-chat");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "text");
  await page.keyboard.type("Second chat");
  await page.keyboard.press("Enter");
  await waitAnswer(page);
  assert.equal(await page.locator("#sessions li").count(), 2);
  await page.locator('#sessions button:text("First chat")').focus();
  await page.keyboard.press("Enter");
  await page.locator('li.msg.assistant[data-status="cancelled"]').waitFor();
  assert.equal(await page.locator("li.msg.user .body").innerText(), "First chat");
  await context.close();
});

// Attach by URL on the chat page: the reference goes with the message (never the bytes), and the
// user's message shows it as a link with its name and type, live and on another device (from the
// server's snapshot). The page never makes the browser fetch the attachment's URL.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startSystem } from "./system.js";
import { launch, openPage, sendMessage, waitAnswer } from "./helpers.js";

const PREFIX = "https://media.example.test/u/";
let sys;
let browser;
before(async () => {
  sys = await startSystem({ name: "attachments", gateways: 1, config: `[media]\nurl_prefixes = ["${PREFIX}"]\n` });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
});

async function attach(page, url, type) {
  await page.locator("#attach-toggle").click();
  await page.locator("#attach-url").fill(url);
  await page.locator("#attach-type").fill(type);
  await page.locator("#attach-add").click();
}

test("an attachment by URL is sent, stored and shown as a link, live and on another device", async () => {
  const requested = [];
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`, {
    setup: (p) => p.on("request", (r) => requested.push(r.url())),
  });
  const url = `${PREFIX}cat%20one.png`;
  await attach(page, url, "image/png");
  assert.equal(await page.locator("#attached li").innerText(), "cat one.png (image/png) ✕");
  await sendMessage(page, "What is in this photo?");
  await waitAnswer(page);
  assert.ok(await page.locator("#attached").isHidden(), "the next message starts without attachments");

  const link = page.locator("li.msg.user .attachments a");
  assert.equal(await link.innerText(), "cat one.png (image/png)");
  assert.equal(await link.getAttribute("href"), url);
  assert.equal(await link.getAttribute("rel"), "noopener noreferrer");
  const live = rec.frames.find((f) => f.type === "user_message");
  assert.deepEqual(live.attachments, [{ url, content_type: "image/png", size: 0, name: "cat one.png" }]);

  await page.reload();
  await page.locator('#conn[data-state="live"]').waitFor();
  assert.equal(await page.locator("li.msg.user .attachments a").innerText(), "cat one.png (image/png)", "kept on refresh");

  // Another device (no saved conversation) opening the same chat: the server's snapshot has it.
  const sid = await page.evaluate(() => localStorage.getItem("chatfleet.page:current"));
  const two = await openPage(browser, `${sys.urls[0]}/`, {
    setup: (p) => {
      p.on("request", (r) => requested.push(r.url()));
      return p.addInitScript((id) => {
        localStorage.setItem("chatfleet.page:sessions", JSON.stringify([{ id, title: "" }]));
        localStorage.setItem("chatfleet.page:current", id);
      }, sid);
    },
  });
  await two.page.locator("li.msg.user .attachments a").waitFor();
  assert.ok(two.rec.frames.some((f) => f.type === "snapshot"), "the conversation came from the server");
  assert.equal(await two.page.locator("li.msg.user .attachments a").innerText(), "cat one.png (image/png)");
  assert.equal(await two.page.locator("img").count(), 0, "no image element");
  await two.context.close();
  assert.equal(await page.locator("img").count(), 0, "no image element");
  assert.deepEqual(requested.filter((u) => u.startsWith("https://media.example.test")), [], "the browser fetched nothing from the storage");
  assert.deepEqual(rec.errors, []);
  await context.close();
});

test("a refused attachment is explained in words and nothing is sent", async () => {
  const { page, rec, context } = await openPage(browser, `${sys.urls[0]}/`);
  await attach(page, "https://elsewhere.test/x.png", "image/png");
  await sendMessage(page, "look at this");
  await page.locator("#notice").waitFor();
  assert.match(await page.locator("#notice-text").innerText(), /refused: an attachment URL is outside the allowed storage/);
  assert.equal(rec.frames.filter((f) => f.type === "user_message").length, 0);
  await context.close();
});

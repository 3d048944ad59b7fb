// The chat page with an archive (a real PostgreSQL): the sidebar lists conversations from the
// server, so a chat started on one device shows on another, and opens with its history even
// after Redis lost it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { redisCommand, startSystem, until } from "./system.js";
import { launch, openPage, sendMessage, waitAnswer, words } from "./helpers.js";

let sys;
let browser;
before(async () => {
  sys = await startSystem({ name: "archive", gateways: 1, archive: true });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
});

test("a chat from one device is listed on another and opens with its history after Redis lost it", async () => {
  const one = await openPage(browser, `${sys.urls[0]}/`);
  await sendMessage(one.page, "Plan the trip to Lisbon");
  const answer = await waitAnswer(one.page);
  await one.context.close();
  // The archive has the turn once the API lists it (the archiver runs a moment behind).
  const listed = async () => {
    const r = await fetch(`${sys.urls[0]}/v1/sessions`);
    const body = await r.json();
    return body.sessions?.some((s) => s.title === "Plan the trip to Lisbon");
  };
  await until("the archived conversation", listed);
  assert.equal(await redisCommand(sys.redisPort, "FLUSHALL"), "+OK");

  // Another device: no localStorage, and Redis has nothing of the chat any more.
  const two = await openPage(browser, `${sys.urls[0]}/`);
  const item = two.page.locator('#sessions button:text("Plan the trip to Lisbon")');
  await item.click();
  await two.page.locator('li.msg.assistant[data-status="done"]').waitFor();
  assert.equal(await two.page.locator("li.msg.user .body").innerText(), "Plan the trip to Lisbon");
  assert.equal(words(await two.page.locator("li.msg.assistant .body").innerText()), words(answer));
  await two.context.close();
});

// What a person sees when things are refused or slow: busy with retry, a failed answer with
// retry, and a tool running. The WebSocket is intercepted (refusals the demo system never makes
// on its own) or fully scripted (tool events the demo model does not produce).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startSystem } from "./system.js";
import { launch, openPage, sendMessage, waitAnswer, WAIT_MS } from "./helpers.js";

let sys;
let browser;
before(async () => {
  sys = await startSystem({ name: "errors", gateways: 1 });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await sys?.stop();
});

test("a busy refusal is shown in words, and Retry sends the message again", async () => {
  const setup = (page) =>
    page.routeWebSocket(/\/v1\/ws/, (ws) => {
      const server = ws.connectToServer();
      let refused = false;
      ws.onMessage((m) => {
        if (!refused && JSON.parse(m).type === "send") {
          refused = true; // as the gateway answers while another turn of the session runs
          ws.send(JSON.stringify({ type: "error", code: "busy", message: "turn t9 is still running", retry_after_ms: 300 }));
        } else server.send(m);
      });
    });
  const { page, context } = await openPage(browser, `${sys.urls[0]}/`, { setup });
  await sendMessage(page, "Are you there");
  await page.locator("#notice").waitFor();
  assert.match(await page.locator("#notice-text").innerText(), /still answering your previous message/);
  const retry = page.locator("#notice-retry");
  assert.ok(await retry.isDisabled(), "not before retry_after_ms");
  await page.waitForFunction(() => !document.getElementById("notice-retry").disabled, null, { timeout: WAIT_MS });
  await retry.click();
  await waitAnswer(page);
  assert.ok(await page.locator("#notice").isHidden());
  assert.equal(await page.locator("li.msg.user .body").innerText(), "Are you there");
  await context.close();
});

test("a running tool is shown, and a failed answer offers a Retry", async () => {
  const inbox = [];
  let sock;
  const setup = (page) =>
    page.routeWebSocket(/\/v1\/ws/, (ws) => {
      sock = ws;
      ws.onMessage((m) => {
        const f = JSON.parse(m);
        inbox.push(f);
        if (f.type === "hello") {
          ws.send(JSON.stringify({ type: "welcome", session_id: f.session_id, epoch: "e1", seq: 0, resume: "snapshot" }));
          ws.send(JSON.stringify({ type: "snapshot", epoch: "e1", seq: 0, messages: [], active: null, reason: "new" }));
        }
      });
    });
  const { page, context } = await openPage(browser, `${sys.urls[0]}/`, { setup });
  const say = (...frames) => frames.forEach((f) => sock.send(JSON.stringify(f)));
  await sendMessage(page, "Look it up");
  const sent = await until(() => inbox.find((f) => f.type === "send"));
  const t = { turn_id: "t1" };
  say(
    { type: "ack", client_msg_id: sent.client_msg_id, turn_id: "t1", seq: 1 },
    { seq: 1, type: "user_message", ...t, client_msg_id: sent.client_msg_id, text: sent.text },
    { seq: 2, type: "turn_started", ...t, attempt: 1 },
    { seq: 3, type: "tool_status", ...t, name: "web_search", state: "running" },
  );
  await page.locator(".meta .tool-running", { hasText: "Running: web_search" }).waitFor();
  say(
    { seq: 4, type: "tool_status", ...t, name: "web_search", state: "done" },
    { seq: 5, type: "delta", ...t, text: "Found **one** result" },
    { seq: 6, type: "error", ...t, code: "degraded", message: "overloaded" },
  );
  const shown = await waitAnswer(page, "error");
  assert.equal(shown, "Found one result", "the partial text stays");
  assert.match(await page.locator(".meta .error").innerText(), /very busy right now/);
  assert.equal(await page.locator(".meta .tool").innerText(), "Finished: web_search");
  await page.locator("button.retry").click();
  const again = await until(() => inbox.filter((f) => f.type === "send")[1]);
  assert.equal(again.text, "Look it up");
  assert.notEqual(again.client_msg_id, sent.client_msg_id, "a new message, not a re-send");
  await context.close();
});

/** Waits, bounded, for `get()` to return something. */
async function until(get) {
  const end = Date.now() + WAIT_MS;
  for (let v = get(); Date.now() < end; v = get()) {
    if (v) return v;
    await new Promise((r) => setTimeout(r, 20)); // polling interval
  }
  throw new Error("timed out");
}

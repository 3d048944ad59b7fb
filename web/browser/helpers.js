// Browser-side helpers: Debian's Chromium through playwright-core, pages that record what a
// person cannot see (dialogs, page errors, WebSocket frames), and text comparisons.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ARTIFACTS } from "./system.js";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Every wait in the browser tests is bounded by this unless it says otherwise. */
export const WAIT_MS = 20_000;

/** `extraArgs`: more Chromium flags (e.g. --host-resolver-rules for pages on other names). */
export async function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    // The machine has no route out: without these, Chromium keeps trying to reach its services.
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...extraArgs,
    ],
    // playwright gives every launch a fresh, temporary --user-data-dir of its own.
    timeout: WAIT_MS,
  });
}

/**
 * A fresh context (own localStorage) and page that records dialogs, errors and WS frames, opened
 * at `url` once its connection is live. `setup(page)` runs first (e.g. to install routes).
 */
export async function openPage(browser, url, { setup } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  await setup?.(page);
  const rec = { dialogs: [], errors: [], frames: [], sockets: [] };
  page.on("dialog", (d) => (rec.dialogs.push(d.message()), d.dismiss().catch(() => {})));
  page.on("pageerror", (e) => rec.errors.push(String(e)));
  page.on("websocket", (ws) => {
    rec.sockets.push(ws.url());
    ws.on("framereceived", (f) => {
      try {
        rec.frames.push(JSON.parse(f.payload));
      } catch {
        /* not JSON */
      }
    });
  });
  await page.goto(url);
  await page.locator('#conn[data-state="live"]').waitFor();
  return { page, context, rec };
}

export async function sendMessage(page, text) {
  await page.locator("#text").fill(text);
  await page.locator("#text").press("Enter");
}

/** The newest answer's element. */
export const lastAnswer = (page) => page.locator("li.msg.assistant").last();

export async function waitAnswer(page, status = "done") {
  await page.locator(`li.msg.assistant[data-status="${status}"]`).last().waitFor();
  return (await lastAnswer(page).locator(".body").innerText());
}

/** Waits until the newest answer shows at least `words` words while still streaming. */
export async function waitPartial(page, words) {
  await page.waitForFunction(
    (n) => {
      const el = [...document.querySelectorAll("li.msg.assistant")].pop();
      return el?.dataset.status === "streaming" && el.querySelector(".body").innerText.split(/\s+/).length >= n;
    },
    words,
    { timeout: WAIT_MS },
  );
}

/**
 * The raw answer text of the latest turn as the server sent it over WebSocket: its deltas in
 * seq order, checked to be gap-free, up to the frame that ended it (`done` unless `end` says
 * otherwise). Read from the network, independent of the page's own code.
 */
export function streamedAnswer(frames, end = "done") {
  const last = frames.filter((f) => f.type === end && f.seq !== undefined).pop();
  if (!last) throw new Error(`no ${end} event seen`);
  const turn = last.turn_id;
  const deltas = frames.filter((f) => f.type === "delta" && f.turn_id === turn);
  let next = null;
  let text = "";
  for (const d of deltas) {
    const first = d.first_seq ?? d.seq;
    if (next !== null && first !== next) throw new Error(`delta seqs not contiguous at ${first}`);
    text += d.text;
    next = d.seq + 1;
  }
  if (last.seq !== next) throw new Error(`${end} does not follow the last delta`);
  return { turn, text, deltas: deltas.length };
}

/**
 * What a reader sees of the demo model's Markdown: heading markers, list bullets, code fences,
 * backticks and emphasis markers (* and a _ not inside a word) are rendered, not shown; so are a
 * table's borders and delimiter row, once there is a table (an answer cut short after the
 * header row has none: its pipes are text).
 */
export const visible = (md) => {
  const lines = md.split("\n");
  const delimiter = (l) => /^\|[-:| ]+\|$/.test(l);
  const table = lines.some(delimiter);
  return words(
    lines
      .filter((l) => !l.startsWith("```") && !delimiter(l))
      .map((l) => l.replace(/^(#{1,6}|-) /, ""))
      .map((l) => (table && l.startsWith("|") ? l.replace(/\|/g, " ") : l))
      .join("\n")
      .replace(/[*`]/g, "")
      .replace(/(^|[^\p{L}\p{N}])_|_(?![\p{L}\p{N}])/gu, "$1"),
  );
};
export const words = (s) => s.split(/\s+/).filter(Boolean).join(" ");

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

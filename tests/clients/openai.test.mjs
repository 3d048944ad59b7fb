// The official `openai` npm package against chatfleet's /v1/chat/completions.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { MODEL, startSystem, storedAnswer } from "./system.mjs";

let sys;
before(async () => (sys = await startSystem("openai-node")));
after(() => sys?.stop());

const client = (baseURL = sys.url) => new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "unused-in-dev-mode", maxRetries: 0 });

test("streamed and non-streamed answers are equal, the stream ends with the usage chunk, and it is what was stored", async () => {
  const messages = [{ role: "user", content: "Explain chatfleet in one line" }];
  const { data: stream, response } = await client()
    .chat.completions.create({ model: "demo", messages, stream: true, stream_options: { include_usage: true } })
    .withResponse();
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, MODEL.max_tokens);
  assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
  assert.equal(chunks.at(-2).choices[0].finish_reason, "stop");
  assert.equal(chunks[0].object, "chat.completion.chunk");

  const whole = await client().chat.completions.create({ model: "demo", messages });
  assert.equal(whole.choices[0].message.content, text);
  assert.equal(whole.choices[0].finish_reason, "stop");
  assert.equal(whole.usage.completion_tokens, MODEL.max_tokens);

  const session = response.headers.get("x-chatfleet-session");
  const turn = response.headers.get("x-chatfleet-turn");
  const stored = await storedAnswer(sys.url, session, turn);
  assert.equal(stored.text, text);
});

test("closing the stream cancels the turn, and a new request works at once", async () => {
  const { data: stream, response } = await client()
    .chat.completions.create({ model: "demo", messages: [{ role: "user", content: "a long answer please" }], stream: true })
    .withResponse();
  let got = "";
  for await (const c of stream) {
    got += c.choices[0]?.delta?.content ?? "";
    if (got.length > 0) break; // leaving the loop aborts the request
  }
  const next = await client().chat.completions.create({ model: "demo", messages: [{ role: "user", content: "next" }] });
  assert.equal(next.choices[0].finish_reason, "stop");
  assert.equal(next.usage.completion_tokens, MODEL.max_tokens);
  const stored = await storedAnswer(sys.url, response.headers.get("x-chatfleet-session"), response.headers.get("x-chatfleet-turn"));
  assert.equal(stored.status, "cancelled");
  assert.ok(stored.text.startsWith(got), "the stored text starts with what was streamed");
});

test("a quota refusal surfaces as the SDK's RateLimitError with Retry-After", async () => {
  const c = client(sys.tightUrl);
  // The tight tenant may have one turn in flight: hold one open, then ask for another.
  const first = await c.chat.completions.create({ model: "demo", messages: [{ role: "user", content: "one" }], stream: true });
  const it = first[Symbol.asyncIterator]();
  await it.next();
  const err = await c.chat.completions.create({ model: "demo", messages: [{ role: "user", content: "two" }] }).then(
    () => assert.fail("a second turn in flight was accepted"),
    (e) => e,
  );
  assert.ok(err instanceof OpenAI.RateLimitError, `got ${err}`);
  assert.equal(err.status, 429);
  assert.equal(err.error.type, "rate_limit_error");
  assert.equal(err.error.code, "quota_exceeded");
  assert.ok(Number(err.headers.get("retry-after")) > 0);
  let last;
  for (let r = await it.next(); !r.done; r = await it.next()) last = r.value;
  assert.equal(last.choices[0].finish_reason, "stop", "the held turn still ends normally");
});

test("the model list is what routing accepts", async () => {
  const ids = [];
  for await (const m of client().models.list()) ids.push(m.id);
  assert.deepEqual(ids, ["demo"]);
});

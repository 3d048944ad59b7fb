// The `ai` npm package's DefaultChatTransport and readUIMessageStream against chatfleet's
// /v1/aisdk/chat: a UI message stream read to the end, and a resume mid-answer.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { DefaultChatTransport, readUIMessageStream } from "ai";
import { startSystem, storedAnswer } from "./system.mjs";

let sys;
before(async () => (sys = await startSystem("aisdk")));
after(() => sys?.stop());

const transport = () => new DefaultChatTransport({ api: `${sys.url}/v1/aisdk/chat` });
const userMessage = (id, text) => ({ id, role: "user", parts: [{ type: "text", text }] });
const textOf = (m) => m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");

async function lastMessage(stream) {
  let last;
  for await (const m of readUIMessageStream({ stream })) last = m;
  return last;
}

test("a UI message stream read to the end is the stored answer", async () => {
  const chatId = `chat-${process.pid}-a`;
  const stream = await transport().sendMessages({
    chatId,
    messages: [userMessage("m1", "What is chatfleet?")],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
  const msg = await lastMessage(stream);
  assert.equal(msg.role, "assistant");
  const stored = await storedAnswer(sys.url, chatId, msg.id);
  assert.equal(stored.status, "done");
  assert.equal(textOf(msg), stored.text);
  assert.ok(stored.text.length > 0);
  assert.equal(await transport().reconnectToStream({ chatId }), null, "no stream to resume: 204");
});

test("a reload mid-answer resumes the same answer to its exact end", async () => {
  const chatId = `chat-${process.pid}-b`;
  const abort = new AbortController();
  const stream = await transport().sendMessages({
    chatId,
    messages: [userMessage("m1", "Tell me about resumable streams")],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: abort.signal,
  });
  // Read until the first text, then "reload": the request goes away mid-answer.
  const reader = stream.getReader();
  let messageId;
  for (;;) {
    const { value } = await reader.read();
    if (value.type === "start") messageId = value.messageId;
    if (value.type === "text-delta") break;
  }
  abort.abort();
  await reader.cancel().catch(() => {});

  const resumed = await transport().reconnectToStream({ chatId });
  assert.ok(resumed, "the running turn's stream is found");
  const msg = await lastMessage(resumed);
  assert.equal(msg.id, messageId, "the same message");
  const stored = await storedAnswer(sys.url, chatId, messageId);
  assert.equal(stored.status, "done", "closing the first request did not stop the turn");
  assert.equal(textOf(msg), stored.text);
});

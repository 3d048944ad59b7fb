// Images by reference through the official `openai` npm package: an `image_url` part reaches a real
// OpenAI-wire upstream as an image part and is stored with the user's message; a type not
// accepted, a data: URL and too many images are the SDK's BadRequestError (400).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { startSystem } from "../../web/browser/system.js";
import { startUpstream } from "../../web/browser/upstream.js";
import { snapshot } from "./system.mjs";

const PREFIX = "https://media.example.test/u/";
let sys, upstream;
before(async () => {
  upstream = await startUpstream((prompt) => `Seen: ${prompt}`);
  sys = await startSystem({
    name: "clients-media",
    gateways: 1,
    env: upstream.env("oa"),
    config: `[media]\nurl_prefixes = ["${PREFIX}"]\n`,
    workerConfig: `[upstreams.oa]\nmedia = ["image/png"]\n`,
  });
});
after(async () => {
  await sys?.stop();
  await upstream?.close();
});

const client = () => new OpenAI({ baseURL: `${sys.urls[0]}/v1`, apiKey: "unused-in-dev-mode", maxRetries: 0 });
const image = (url) => ({ type: "image_url", image_url: { url, detail: "low" } });

test("an image part reaches the upstream as an image part and is stored with the message", async () => {
  const url = `${PREFIX}cat.png`;
  const { data, response } = await client()
    .chat.completions.create({ messages: [{ role: "user", content: [{ type: "text", text: "what is this?" }, image(url)] }] })
    .withResponse();
  assert.equal(data.choices[0].message.content, "Seen: what is this?");
  assert.deepEqual(upstream.bodies.at(-1).messages.at(-1), {
    role: "user",
    content: [{ type: "text", text: "what is this?" }, { type: "image_url", image_url: { url } }],
  });
  const stored = await snapshot(sys.urls[0], response.headers.get("x-chatfleet-session"));
  assert.deepEqual(stored.messages[0].attachments, [{ url, content_type: "image/png", size: 0 }]);
});

test("refused images are the SDK's BadRequestError and reach no upstream", async () => {
  const before = upstream.bodies.length;
  const cases = [
    [[image(`${PREFIX}drawing.svg`)], /image\/svg\+xml.*not accepted/],
    [[image("data:image/png;base64,iVBORw0KGgo=")], /data: URLs are not accepted/],
    [Array.from({ length: 5 }, (_, i) => image(`${PREFIX}${i}.png`)), /at most 4 attachments/],
  ];
  for (const [images, says] of cases) {
    const content = [{ type: "text", text: "look" }, ...images];
    const err = await client().chat.completions.create({ messages: [{ role: "user", content }] }).then(
      () => assert.fail("a refused image was accepted"),
      (e) => e,
    );
    assert.ok(err instanceof OpenAI.BadRequestError, `got ${err}`);
    assert.equal(err.status, 400);
    assert.equal(err.error.type, "invalid_request_error");
    assert.match(err.error.message, says);
  }
  assert.equal(upstream.bodies.length, before);
});

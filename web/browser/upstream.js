// A model upstream for browser tests: a real HTTP server speaking OpenAI Chat Completions
// streaming (`POST /v1/chat/completions`, SSE chunks, usage, `[DONE]`), answering each request
// with the text `answer(lastUserMessage)` gives, a few characters per chunk at a steady pace.

import { createServer } from "node:http";
import { freePort } from "./system.js";

/** The longest request body read; the tests send short prompts. */
const MAX_BODY_BYTES = 1 << 20;

/**
 * Starts the server. `answer(prompt)` gives the answer's text; `chunkChars` and `everyMs` set
 * how it is cut and paced. Resolves {url (the base_url, ending in /v1), env(name), seen, bodies,
 * close()}; `seen` lists every request as "METHOD path", `bodies` every chat request's JSON body.
 */
export async function startUpstream(answer, { chunkChars = 4, everyMs = 15 } = {}) {
  const seen = [];
  const bodies = [];
  const server = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.method !== "POST" || req.url !== "/v1/chat/completions") {
      res.writeHead(404).end();
      return;
    }
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d) => {
      body += d;
      if (body.length > MAX_BODY_BYTES) req.destroy();
    });
    req.on("end", () => {
      const request = JSON.parse(body);
      bodies.push(request);
      // A message with images has content parts; the prompt is its text.
      const content = request.messages.filter((m) => m.role === "user").pop()?.content ?? "";
      const prompt = Array.isArray(content) ? content.filter((p) => p.type === "text").map((p) => p.text).join("") : content;
      const pieces = [...answer(prompt)].reduce((out, c, i) => {
        if (i % chunkChars === 0) out.push("");
        out[out.length - 1] += c;
        return out;
      }, []);
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      const send = (chunk) => res.write(`data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", model: request.model, ...chunk })}\n\n`);
      send({ choices: [{ index: 0, delta: { role: "assistant", content: "" } }] });
      let i = 0;
      const timer = setInterval(() => {
        if (i < pieces.length) {
          send({ choices: [{ index: 0, delta: { content: pieces[i++] } }] });
          return;
        }
        clearInterval(timer);
        send({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] });
        send({ choices: [], usage: { prompt_tokens: prompt.length, completion_tokens: pieces.length, total_tokens: prompt.length + pieces.length } });
        res.end("data: [DONE]\n\n");
      }, everyMs);
      res.on("close", () => clearInterval(timer)); // the worker stopped the turn
    });
  });
  const port = await freePort();
  await new Promise((ok) => server.listen(port, "127.0.0.1", ok));
  const url = `http://127.0.0.1:${port}/v1`;
  return {
    url,
    seen,
    bodies,
    /** Settings for a system whose only upstream, `name`, is this server. */
    env: (name) => ({
      [`CHATFLEET__UPSTREAMS__${name.toUpperCase()}__KIND`]: "openai",
      [`CHATFLEET__UPSTREAMS__${name.toUpperCase()}__BASE_URL`]: url,
      [`CHATFLEET__UPSTREAMS__${name.toUpperCase()}__MODEL`]: "markdown-writer",
      CHATFLEET__ROUTING__DEFAULT: name,
    }),
    close: () => new Promise((ok) => server.close(ok)),
  };
}

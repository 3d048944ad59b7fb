// The sidebar's list against a fake fetch: from the server's archive when it has one, local
// otherwise.
import test from "node:test";
import assert from "node:assert/strict";
import { Sessions } from "../../src/gateway/static/ui/sessions.js";
import { MemoryStorage } from "./fakes.js";

let n = 0;
const makeId = () => `s${++n}`;

test("with an archive, the list is the server's, newest first, and the open new chat stays on top", async () => {
  const storage = new MemoryStorage();
  const s = new Sessions(storage, makeId);
  const open = s.create();
  const urls = [];
  const fetch = async (url) => {
    urls.push(url);
    return Response.json({ sessions: [{ id: "old2", title: "Second" }, { id: "old1", title: "First" }] });
  };
  assert.equal(await s.sync("http://gw.test", fetch), true);
  assert.equal(urls[0], "http://gw.test/v1/sessions?limit=50");
  assert.deepEqual(s.items.map((x) => [x.id, x.title]), [[open, ""], ["old2", "Second"], ["old1", "First"]]);
  // Another device's list arrives on the next sync: this chat is archived now, under its title.
  const next = async () => Response.json({ sessions: [{ id: open, title: "Mine" }, { id: "old2", title: "Second" }] });
  assert.equal(await s.sync("http://gw.test", next), true);
  assert.deepEqual(s.items.map((x) => [x.id, x.title]), [[open, "Mine"], ["old2", "Second"]]);
});

test("without an archive (404) or a reachable server, the local list stays", async () => {
  const storage = new MemoryStorage();
  const s = new Sessions(storage, makeId);
  const id = s.create();
  s.title(id, "hello   there");
  const notFound = async () => Response.json({ type: "error", code: "not_found" }, { status: 404 });
  assert.equal(await s.sync("http://gw.test", notFound), false);
  const down = async () => {
    throw new TypeError("fetch failed");
  };
  assert.equal(await s.sync("http://gw.test", down), false);
  const garbage = async () => Response.json({ nope: 1 });
  assert.equal(await s.sync("http://gw.test", garbage), false);
  assert.deepEqual(s.items, [{ id, title: "hello there" }]);
  assert.deepEqual(new Sessions(storage, makeId).items, [{ id, title: "hello there" }]);
});

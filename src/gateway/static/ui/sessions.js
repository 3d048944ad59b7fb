// The page's list of chats, newest first. With an archive on the server, the list comes from
// the conversations API (`GET /v1/sessions`), so every device shows the same one and old chats
// open with their history; without one (the API answers 404), ids and titles are kept in
// localStorage. The conversations themselves are kept by chatfleet.js (and on the server); this
// only remembers which exist.

const KEY = "chatfleet.page:sessions";
const CURRENT = "chatfleet.page:current";
const MAX_SESSIONS = 50;

export class Sessions {
  constructor(storage, makeId) {
    this.storage = storage;
    this.makeId = makeId;
    try {
      this.items = JSON.parse(storage?.getItem(KEY) ?? "[]");
    } catch {
      this.items = [];
    }
    if (!Array.isArray(this.items)) this.items = [];
  }

  /** The open chat: the remembered one, or a new one. */
  current() {
    const id = this.storage?.getItem(CURRENT);
    return this.items.some((s) => s.id === id) ? id : this.create();
  }

  create() {
    const id = this.makeId();
    this.items.unshift({ id, title: "" });
    this.items = this.items.slice(0, MAX_SESSIONS);
    this.select(id);
    return id;
  }

  select(id) {
    try {
      this.storage?.setItem(CURRENT, id);
    } catch {
      /* storage full: the choice lives for this page only */
    }
    this.save();
  }

  /** Names a chat after its first message. Returns true if the title changed. */
  title(id, text) {
    const s = this.items.find((x) => x.id === id);
    const title = text.replace(/\s+/g, " ").trim().slice(0, 60);
    if (!s || s.title === title) return false;
    s.title = title;
    this.save();
    return true;
  }

  /**
   * Takes the list from the server's archive. Returns true when it did; false when the server
   * has no archive (404) or cannot be reached, and the local list stays.
   */
  async sync(base, fetchFn = globalThis.fetch, token = null) {
    let body;
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const r = await fetchFn(`${base}/v1/sessions?limit=${MAX_SESSIONS}`, { headers });
      if (!r.ok) return false;
      body = await r.json();
    } catch {
      return false;
    }
    if (!Array.isArray(body?.sessions)) return false;
    const remote = body.sessions.map((s) => ({ id: String(s.id), title: String(s.title ?? "") }));
    const ids = new Set(remote.map((s) => s.id));
    // The open chat stays listed until the archive has it (new, or its first answer running).
    const current = this.storage?.getItem(CURRENT);
    const local = this.items.filter((s) => s.id === current && !ids.has(s.id));
    this.items = [...local, ...remote].slice(0, MAX_SESSIONS);
    this.remote = true;
    // Kept locally only as this device's cache for the next first paint; the server's wins.
    this.save();
    return true;
  }

  save() {
    try {
      this.storage?.setItem(KEY, JSON.stringify(this.items));
    } catch {
      /* storage full: the list lives for this page only */
    }
  }
}

// The page's list of chats: ids and titles in localStorage, newest first. The conversations
// themselves are kept by chatfleet.js (and on the server); this only remembers which exist.

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
    this.storage?.setItem(CURRENT, id);
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

  save() {
    try {
      this.storage?.setItem(KEY, JSON.stringify(this.items));
    } catch {
      /* storage full: the list lives for this page only */
    }
  }
}

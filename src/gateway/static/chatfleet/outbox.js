// Messages sent and not yet acked. Each keeps its client_msg_id for life, so every re-send is the
// same message to the server (docs/protocol.md: "Retry with the same id until you get the ack").

export class Outbox {
  /** @param {{id:string, text:string, attachments?:object[]}[]|undefined} saved entries restored from storage */
  constructor(saved) {
    this._m = new Map();
    for (const { id, text, attachments } of saved ?? []) this.add(id, text, attachments);
  }

  /**
   * Adds (or finds) a message; its promise settles with the ack or the refusal. `attachments`
   * ride along unchanged on every re-send.
   */
  add(id, text, attachments = []) {
    let e = this._m.get(id);
    if (!e) {
      e = { id, text, attachments, link: null, sentAt: 0, notBefore: 0 };
      e.promise = new Promise((resolve, reject) => Object.assign(e, { resolve, reject }));
      // Apps that only listen to events need not handle the promise: no unhandled rejection.
      e.promise.catch(() => {});
      this._m.set(id, e);
    }
    return e;
  }

  has(id) {
    return this._m.has(id);
  }

  entries() {
    return [...this._m.values()];
  }

  list() {
    return this.entries().map((e) => ({ clientMsgId: e.id, text: e.text, attachments: e.attachments }));
  }

  /** Marks a message as written on a connection; it is not written there again until acked. */
  sent(e, link, now) {
    e.link = link;
    e.sentAt = now;
  }

  /** The write failed (HTTP transports): send again at the next chance. */
  unsent(id) {
    const e = this._m.get(id);
    if (e) e.link = null;
  }

  /** A connection ended: what it carried unacked goes out again on the next one. */
  forgetLink(link) {
    for (const e of this._m.values()) if (e.link === link) e.link = null;
  }

  /** `unavailable`: the server asks to try again later. */
  retryLater(id, at) {
    const e = this._m.get(id);
    if (e) Object.assign(e, { link: null, notBefore: at });
  }

  /** Returns true if this ack settled a waiting message. */
  resolve(ack) {
    const e = this._m.get(ack.client_msg_id);
    if (!e) return false;
    this._m.delete(e.id);
    e.resolve(ack);
    return true;
  }

  /** The server refused the message; it is dropped (nothing was stored) and returned. */
  refuse(id, error) {
    const e = this._m.get(id);
    this._m.delete(id);
    e.reject(error);
    return e;
  }

  toJSON() {
    return this.list().map(({ clientMsgId, text, attachments }) => ({ id: clientMsgId, text, attachments }));
  }
}

// Seq ordering and the conversation model of one session (docs/protocol.md, "Resume rules").
//
// The Sequencer decides, for every event from any connection, whether it is new, a duplicate, or
// beyond a gap. Merged deltas (`first_seq..=seq`) that overlap what was applied are trimmed, so a
// client with two connections open at once (a make-before-break switch) applies each seq once.

/** Remembers how long each applied delta was, so an overlapping merged delta can be trimmed. */
const MAX_DELTA_SPANS = 4096;

export class Sequencer {
  constructor(epoch = null, seq = null) {
    /** Epoch the seqs belong to; a different epoch makes them meaningless. */
    this.epoch = epoch;
    /** Highest seq applied, or null before the first welcome/snapshot of a new session. */
    this.seq = seq;
    /** first seq of an applied delta span -> {last, len}; cleared when a turn ends. */
    this.spans = new Map();
  }

  /** Starts over at a snapshot's seq: whatever was applied is replaced. */
  reset(epoch, seq) {
    this.epoch = epoch;
    this.seq = seq;
    this.spans.clear();
  }

  /**
   * Classifies an event: `{kind: "apply", ev}` (ev possibly trimmed), `{kind: "dup"}` or
   * `{kind: "gap"}` (the caller resumes from `seq`; the server fills gaps from its log).
   */
  admit(ev) {
    const last = this.seq ?? 0;
    const first = ev.first_seq ?? ev.seq;
    if (ev.seq <= last) return { kind: "dup" };
    if (first > last + 1) return { kind: "gap" };
    if (first <= last) {
      // Part of this merged delta was applied from another connection: skip those seqs' text.
      let skip = 0;
      for (let s = first; s <= last; ) {
        const span = this.spans.get(s);
        if (!span || span.last > last) return { kind: "gap" };
        skip += span.len;
        s = span.last + 1;
      }
      ev = { ...ev, first_seq: last + 1, text: ev.text.slice(skip) };
    }
    return { kind: "apply", ev };
  }

  /** Records an applied event. */
  applied(ev) {
    this.seq = ev.seq;
    if (ev.type === "delta") {
      this.spans.set(ev.first_seq ?? ev.seq, { last: ev.seq, len: ev.text.length });
      if (this.spans.size > MAX_DELTA_SPANS) this.spans.delete(this.spans.keys().next().value);
    } else if (ev.type === "done" || ev.type === "error" || ev.type === "cancelled" || ev.type === "reset") {
      this.spans.clear();
    }
  }
}

/**
 * What the session shows: messages in order and the running turn. Plain data, so it can be
 * persisted with the seq it is valid at. Every change bumps `rev` on the message and on the
 * conversation, which lets a renderer redo only what changed.
 */
export class Conversation {
  constructor(data) {
    /** @type {{role:string, turn_id:string, text:string, status?:string, attachments?:object[], rev:number}[]} */
    this.messages = data?.messages ?? [];
    /** Turn running now, or null. */
    this.activeTurnId = data?.activeTurnId ?? null;
    this.rev = data?.rev ?? 0;
  }

  toJSON() {
    return { messages: this.messages, activeTurnId: this.activeTurnId, rev: this.rev };
  }

  /** Replaces everything with a snapshot frame's state. */
  loadSnapshot(snap) {
    this.messages = snap.messages.map((m) => ({ ...m, rev: 0 }));
    for (const m of this.messages) if (m.role === "assistant" && !m.status) m.status = "done";
    this.activeTurnId = snap.active?.turn_id ?? null;
    if (snap.active) {
      const m = this.assistant(snap.active.turn_id);
      m.text = snap.active.text;
      m.status = "streaming";
    }
    this.rev++;
  }

  /** The assistant message of a turn, created (empty, streaming) when missing. */
  assistant(turnId) {
    let m = this.find("assistant", turnId);
    if (!m) {
      m = { role: "assistant", turn_id: turnId, text: "", status: "streaming", rev: 0 };
      this.messages.push(m);
    }
    return m;
  }

  find(role, turnId) {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      const m = this.messages[i];
      if (m.role === role && m.turn_id === turnId) return m;
    }
    return null;
  }

  /** Applies one admitted event; returns the message it changed. */
  apply(ev) {
    let m;
    switch (ev.type) {
      case "user_message":
        m = this.find("user", ev.turn_id);
        if (!m) {
          m = { role: "user", turn_id: ev.turn_id, text: ev.text, client_msg_id: ev.client_msg_id, rev: 0 };
          if (ev.attachments?.length) m.attachments = ev.attachments;
          this.messages.push(m);
        }
        this.activeTurnId = ev.turn_id;
        break;
      case "turn_started":
        m = this.assistant(ev.turn_id);
        m.attempt = ev.attempt;
        m.status = "streaming";
        this.activeTurnId = ev.turn_id;
        break;
      case "delta":
        m = this.assistant(ev.turn_id);
        m.text += ev.text;
        break;
      case "tool_status":
        m = this.assistant(ev.turn_id);
        m.tools = { ...m.tools, [ev.name]: ev.state };
        break;
      case "reset":
        m = this.assistant(ev.turn_id);
        m.text = "";
        m.tools = undefined;
        m.attempt = ev.attempt;
        m.status = "streaming";
        break;
      case "done":
      case "error":
      case "cancelled":
        m = this.assistant(ev.turn_id);
        m.status = ev.type;
        if (ev.type === "error") m.error = { code: ev.code, message: ev.message };
        if (ev.usage) m.usage = ev.usage;
        if (this.activeTurnId === ev.turn_id) this.activeTurnId = null;
        break;
      default:
        return null; // An event type from a newer protocol: skipped, its seq still counts.
    }
    m.rev++;
    this.rev++;
    return m;
  }
}

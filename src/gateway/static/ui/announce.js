// Speech for a streaming answer: text reaches the aria-live region a phrase or clause at a time,
// never per token, so a screen reader speaks whole phrases and is not flooded with updates.

/** A phrase ends at sentence or clause punctuation followed by a space, or at a line break. */
const BOUNDARY = /[.!?;:,…](?=\s)|\n/g;
/** Announce at least this much at once unless the answer ended... */
const MIN_CHARS = 24;
/** ...and at most about this much without a boundary (a long run-on is cut at a space). */
const MAX_CHARS = 200;
/** Old announcements are removed, so the region does not grow with the conversation. */
const KEEP = 4;

export class Announcer {
  constructor(region) {
    this.region = region;
    this.turnId = null;
    this.spoken = 0; // how much of the turn's plain text has been announced
  }

  /**
   * Feeds the plain text of a turn so far. Announces the part up to the last phrase boundary
   * that is long enough; with `final`, everything left.
   */
  progress(turnId, plain, final) {
    if (turnId !== this.turnId || plain.length < this.spoken) {
      this.turnId = turnId; // a new turn, or a reset that dropped the text: start over
      this.spoken = 0;
    }
    const fresh = plain.slice(this.spoken);
    let cut = final ? fresh.length : 0;
    if (!final && fresh.length >= MIN_CHARS) {
      for (const m of fresh.matchAll(BOUNDARY)) if (m.index + 1 >= MIN_CHARS) cut = m.index + 1;
      if (!cut && fresh.length > MAX_CHARS) cut = fresh.lastIndexOf(" ") + 1;
    }
    if (cut > 0) {
      this.say(fresh.slice(0, cut));
      this.spoken += cut;
    }
  }

  /** Marks a turn's text as already known (shown on load), so it is not read out again. */
  skip(turnId, plain) {
    this.turnId = turnId;
    this.spoken = plain.length;
  }

  say(text) {
    const t = text.replace(/\s+/g, " ").trim();
    if (!t) return;
    const p = this.region.ownerDocument.createElement("p");
    p.textContent = t;
    this.region.append(p);
    while (this.region.childElementCount > KEEP) this.region.firstElementChild.remove();
  }
}

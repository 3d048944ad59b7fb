// A session's stored record: {v, epoch, seq, conv, outbox}. The cursor (epoch, seq) and the
// conversation it describes are written in one item, so a reload never pairs a cursor with a
// conversation from another moment: resuming from it shows nothing twice and misses nothing.

const VERSION = 1;

/** The stored record, or null if there is none or it is unreadable or from another version. */
export function loadRecord(storage, key) {
  try {
    const rec = JSON.parse(storage?.getItem(key) ?? "null");
    return rec?.v === VERSION ? rec : null;
  } catch {
    return null;
  }
}

/** Stores the record; over quota, keeps only the unsent messages (the next load starts from a snapshot). */
export function saveRecord(storage, key, { epoch, seq, conv, outbox }) {
  if (!storage) return;
  try {
    storage.setItem(key, JSON.stringify({ v: VERSION, epoch, seq, conv, outbox }));
  } catch {
    try {
      storage.setItem(key, JSON.stringify({ v: VERSION, outbox }));
    } catch {
      /* storage unusable: nothing persists */
    }
  }
}

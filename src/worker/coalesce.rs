//! Merging model tokens into deltas.
//!
//! The first text of a turn goes out at once (time to first token is what users feel). After it,
//! text is held for up to a window (tens of ms) and sent as one delta, which cuts Redis writes and
//! client frames by an order of magnitude at no visible cost. A delta never ends inside a UTF-8
//! character: raw bytes from an upstream are decoded incrementally and an incomplete trailing
//! sequence waits for the rest; a delta cut for size is cut at a character boundary.

use std::time::Duration;

use tokio::time::Instant;

/// Token coalescer for one turn.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    max_bytes: usize,
    buf: String,
    /// Bytes of a UTF-8 character whose remaining bytes have not arrived yet (at most 3).
    tail: Vec<u8>,
    first_sent: bool,
    deadline: Option<Instant>,
}

impl Coalescer {
    /// `window`: how long text after the first delta may wait; `max_bytes`: largest delta.
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            window,
            max_bytes: max_bytes.max(4),
            buf: String::new(),
            tail: Vec::new(),
            first_sent: false,
            deadline: None,
        }
    }

    /// Adds text.
    pub fn push_str(&mut self, text: &str, now: Instant) {
        if text.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // A character was left incomplete and text resumed with a new one: it can never
            // complete, so it becomes U+FFFD rather than corrupting what follows.
            self.tail.clear();
            self.buf.push(char::REPLACEMENT_CHARACTER);
        }
        self.buf.push_str(text);
        self.arm(now);
    }

    /// Adds raw bytes that may split a character across calls.
    pub fn push_bytes(&mut self, bytes: &[u8], now: Instant) {
        let joined;
        let mut input = bytes;
        if !self.tail.is_empty() {
            let mut t = std::mem::take(&mut self.tail);
            t.extend_from_slice(bytes);
            joined = t;
            input = &joined;
        }
        loop {
            match std::str::from_utf8(input) {
                Ok(s) => {
                    self.buf.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, rest) = input.split_at(e.valid_up_to());
                    self.buf.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            self.tail = rest.to_vec();
                            break;
                        }
                        Some(bad) => {
                            self.buf.push(char::REPLACEMENT_CHARACTER);
                            input = &rest[bad..];
                        }
                    }
                }
            }
        }
        if !self.buf.is_empty() {
            self.arm(now);
        }
    }

    /// Sets when the held text is due: at once before the first delta or past the size limit,
    /// else one window after the oldest held text arrived.
    fn arm(&mut self, now: Instant) {
        if !self.first_sent || self.buf.len() >= self.max_bytes {
            self.deadline = Some(now);
        } else if self.deadline.is_none() {
            self.deadline = Some(now + self.window);
        }
    }

    /// When the held text must go out; `None` when nothing is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True when a delta should be sent now.
    pub fn ready(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Takes the next delta (at most `max_bytes`, ending on a character boundary).
    pub fn take(&mut self, now: Instant) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        let out = if self.buf.len() <= self.max_bytes {
            std::mem::take(&mut self.buf)
        } else {
            let mut cut = self.max_bytes;
            while !self.buf.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = self.buf.split_off(cut);
            std::mem::replace(&mut self.buf, rest)
        };
        self.first_sent = true;
        self.deadline = if self.buf.is_empty() { None } else { Some(now) };
        Some(out)
    }

    /// Takes everything left at the end of the stream; an incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> Option<String> {
        if !self.tail.is_empty() {
            self.tail.clear();
            self.buf.push(char::REPLACEMENT_CHARACTER);
        }
        self.deadline = None;
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(30);

    #[tokio::test(start_paused = true)]
    async fn the_first_token_goes_out_at_once_and_later_ones_wait_for_the_window() {
        let mut c = Coalescer::new(W, 1024);
        let t0 = Instant::now();
        c.push_str("Hel", t0);
        assert!(c.ready(t0), "first token must not wait");
        assert_eq!(c.take(t0).as_deref(), Some("Hel"));
        c.push_str("lo", t0);
        c.push_str(" world", t0);
        assert!(!c.ready(t0));
        assert_eq!(c.deadline(), Some(t0 + W));
        tokio::time::advance(W).await;
        let t1 = Instant::now();
        assert!(c.ready(t1));
        assert_eq!(c.take(t1).as_deref(), Some("lo world"));
        assert_eq!(c.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_character_split_across_byte_chunks_is_never_split_in_a_delta() {
        let mut c = Coalescer::new(Duration::ZERO, 1024);
        let now = Instant::now();
        let bytes = "a🚀é".as_bytes();
        // Feed one byte at a time: every delta taken must be valid, complete characters.
        let mut out = String::new();
        for b in bytes {
            c.push_bytes(std::slice::from_ref(b), now);
            if c.ready(now) {
                out.push_str(&c.take(now).unwrap());
            }
        }
        assert!(c.finish().is_none());
        assert_eq!(out, "a🚀é");
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_bytes_become_replacement_characters() {
        let mut c = Coalescer::new(Duration::ZERO, 1024);
        let now = Instant::now();
        c.push_bytes(b"a\xffb\xf0\x9f", now);
        assert_eq!(c.take(now).as_deref(), Some("a\u{fffd}b"));
        assert_eq!(c.finish().as_deref(), Some("\u{fffd}"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_run_is_cut_at_a_character_boundary() {
        let mut c = Coalescer::new(W, 5);
        let now = Instant::now();
        c.push_str("ééé", now); // 6 bytes
        let first = c.take(now).unwrap();
        assert_eq!(first, "éé");
        assert!(c.ready(now), "the rest is due at once");
        assert_eq!(c.take(now).as_deref(), Some("é"));
    }
}

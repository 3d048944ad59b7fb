//! The streaming redaction filter: model text in, text safe to store and send out.
//!
//! The filter decides the text position by position, left to right. At a position, the
//! detectors ([`super::detect`]) run anchored in priority order; the first whose match is
//! accepted replaces it with `[redacted:<kind>]` and the filter moves past it, otherwise one
//! character is released as it is. A position whose outcome could still change with more text
//! (a detector's DFA is not dead at the end of what arrived: `a@b.co` may become `a@b.com`, a
//! word may become an e-mail's local part) is held, with everything after it, until a later
//! delta decides it or the round ends. So the concatenated output of any split of a text into
//! deltas equals the output for the whole text at once, and a match never slips out across a
//! delta boundary.
//!
//! The held text is bounded by `guard.max_holdback_chars`: past it, the oldest held position is
//! decided with what is there (the longest match so far counts), so a pathological stream cannot
//! stall the answer.

use std::sync::Arc;

use super::detect::{Accept, Detector, Scan};
use super::settings::GuardSettings;
use crate::metrics as m;

/// The compiled detectors of one policy, shared by its turns.
#[derive(Debug)]
pub struct Rules {
    detectors: Vec<Detector>,
}

impl Rules {
    /// The built-in kinds, then `s.redact_patterns`.
    pub fn build(s: &GuardSettings) -> Result<Rules, String> {
        let mut detectors = vec![Detector::email(), Detector::number()];
        for p in &s.redact_patterns {
            detectors.push(Detector::pattern(&p.name, &p.regex)?);
        }
        Ok(Rules { detectors })
    }
}

/// What the filter does at a position.
enum Decision {
    /// Redact up to `end`, labelled `kind`, or the name of detector `det`.
    Redact {
        end: usize,
        det: usize,
        kind: Option<&'static str>,
    },
    Keep(usize),
    Wait,
}

/// One turn's filter.
#[derive(Debug)]
pub struct Redactor {
    rules: Arc<Rules>,
    max_hold: usize,
    /// Text not yet released, after `done` bytes of released text kept as look-behind.
    buf: String,
    done: usize,
    /// Per detector: a position in `buf` before which it may not start (inside a number run it
    /// declined).
    skip: Vec<usize>,
}

impl Redactor {
    pub fn new(rules: Arc<Rules>, max_hold: usize) -> Self {
        let skip = vec![0; rules.detectors.len()];
        Self { rules, max_hold, buf: String::new(), done: 0, skip }
    }

    /// Adds model text; appends to `out` what can be released.
    pub fn push(&mut self, text: &str, out: &mut String) {
        self.buf.push_str(text);
        self.run(false, out);
    }

    /// The text ended (round end, stop, error): decides and releases everything held.
    pub fn finish(&mut self, out: &mut String) {
        self.run(true, out);
        self.buf.clear();
        self.done = 0;
        self.skip.iter_mut().for_each(|s| *s = 0);
    }

    /// Characters held back.
    pub fn held_chars(&self) -> usize {
        self.buf[self.done..].chars().count()
    }

    fn run(&mut self, eoi: bool, out: &mut String) {
        let rules = self.rules.clone();
        let mut p = self.done;
        while p < self.buf.len() {
            let mut d = self.decide(p, eoi, false);
            if matches!(d, Decision::Wait) {
                if self.buf[p..].chars().nth(self.max_hold).is_none() {
                    break;
                }
                d = self.decide(p, false, true);
            }
            match d {
                Decision::Redact { end, det, kind } => {
                    let label = kind.unwrap_or(&rules.detectors[det].name);
                    let kind = match (kind, det) {
                        (Some(k), _) => k,
                        (None, 0) => "email",
                        (None, _) => "pattern",
                    };
                    metrics::counter!(m::GUARD_REDACTIONS, "kind" => kind).increment(1);
                    out.push_str("[redacted:");
                    out.push_str(label);
                    out.push(']');
                    p = end;
                }
                Decision::Keep(end) => {
                    out.push_str(&self.buf[p..end]);
                    p = end;
                }
                Decision::Wait => unreachable!("a forced decision never waits"),
            }
        }
        // Keep one released character as look-behind (word boundaries, line starts).
        let keep = self.buf[..p].char_indices().next_back().map_or(0, |(i, _)| i);
        self.buf.drain(..keep);
        self.done = p - keep;
        self.skip.iter_mut().for_each(|s| *s = s.saturating_sub(keep));
    }

    /// The decision at `p`. `forced`: decide with what is there (the hold-back bound).
    fn decide(&mut self, p: usize, eoi: bool, forced: bool) -> Decision {
        let Self { rules, buf, skip, .. } = self;
        let hay = buf.as_bytes();
        for (i, det) in rules.detectors.iter().enumerate() {
            if p < skip[i] {
                continue;
            }
            let (alive, found) = match det.scan(hay, p, eoi) {
                Scan::Dead(f) => (false, f),
                Scan::Alive(f) => (true, f),
            };
            if alive && !forced {
                return Decision::Wait;
            }
            let Some(end) = found.filter(|&e| e > p) else { continue };
            match det.accept(&buf[p..end]) {
                Accept::Named => return Decision::Redact { end, det: i, kind: None },
                Accept::As(kind) => return Decision::Redact { end, det: i, kind: Some(kind) },
                Accept::No if det.skips_declined() => skip[i] = end,
                Accept::No => {}
            }
        }
        let len = buf[p..].chars().next().map_or(1, char::len_utf8);
        Decision::Keep(p + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::settings::RedactPattern;

    fn redactor(patterns: &[(&str, &str)], max_hold: usize) -> Redactor {
        let s = GuardSettings {
            redact: true,
            redact_patterns: patterns
                .iter()
                .map(|(n, r)| RedactPattern { name: n.to_string(), regex: r.to_string() })
                .collect(),
            ..Default::default()
        };
        Redactor::new(Arc::new(Rules::build(&s).unwrap()), max_hold)
    }

    fn whole(text: &str) -> String {
        let mut r = redactor(&[("ticket", "TCK-[0-9]{6}")], 64);
        let mut out = String::new();
        r.push(text, &mut out);
        r.finish(&mut out);
        out
    }

    #[test]
    fn each_kind_is_replaced_by_its_marker() {
        assert_eq!(
            whole("Mail ann.lee+x@mail.example.co.uk, call +1 555 123 4567 or (555) 123-4567, pay 4111 1111 1111 1111, ref TCK-123456."),
            "Mail [redacted:email], call [redacted:phone] or [redacted:phone], pay [redacted:card], ref [redacted:ticket]."
        );
    }

    #[test]
    fn a_sixteen_digit_number_failing_luhn_and_ordinary_numbers_pass_untouched() {
        for t in ["id 4111 1111 1111 1112 ok", "on 2024-01-15 at 3.14159265 for 1700000000 users", "año 2026 ünïcödé"]
        {
            assert_eq!(whole(t), t);
        }
    }

    #[test]
    fn a_match_that_could_still_grow_is_held_until_a_character_ends_it() {
        let mut r = redactor(&[], 64);
        let mut out = String::new();
        r.push("write to a@b.co", &mut out);
        assert_eq!(out, "write to ", "the address could still grow");
        r.push("m", &mut out);
        assert_eq!(out, "write to ");
        r.push(" now", &mut out);
        assert_eq!(out, "write to [redacted:email] ", "ended by the space; `now` could be an address");
        r.finish(&mut out);
        assert_eq!(out, "write to [redacted:email] now");
    }

    #[test]
    fn text_that_cannot_become_a_match_is_released_at_once() {
        let mut r = redactor(&[], 64);
        let mut out = String::new();
        r.push("Hello, world! ", &mut out);
        assert_eq!(out, "Hello, world! ");
        assert_eq!(r.held_chars(), 0);
    }

    #[test]
    fn the_hold_back_is_bounded_and_a_longer_pattern_is_checked_only_within_the_bound() {
        let mut r = redactor(&[("long", "X[a-z]+Y")], 8);
        let mut out = String::new();
        r.push("Xabcdefghijklmnop", &mut out);
        assert!(r.held_chars() <= 8, "held {}", r.held_chars());
        assert!(out.starts_with("Xabcdefg"), "released past the bound: {out:?}");
        r.push("Y.", &mut out);
        r.finish(&mut out);
        assert_eq!(out, "XabcdefghijklmnopY.", "the 18-character match was never whole within the bound");
    }

    #[test]
    fn finishing_redacts_a_held_match_and_releases_held_safe_text() {
        let mut r = redactor(&[], 64);
        let mut out = String::new();
        r.push("reach me at bob@example.org", &mut out);
        assert_eq!(out, "reach me at ");
        r.finish(&mut out);
        assert_eq!(out, "reach me at [redacted:email]");
        let mut out = String::new();
        r.push("see you", &mut out);
        r.finish(&mut out);
        assert_eq!(out, "see you");
    }
}

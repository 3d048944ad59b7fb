//! The kinds of text the redaction filter looks for, each a DFA of the `regex` crate's engine
//! (`regex-automata`), run anchored at a position so the filter can tell a finished match from
//! one that the next delta could still extend.
//!
//! Built in, in priority order (an earlier kind wins at the same position):
//! - `email`: `local@domain.tld`, the local part starting at a word boundary;
//! - numbers: a run of digit groups joined by single separators (` `, `.`, `-`, parentheses),
//!   starting at a word boundary, optionally after `+`. The whole run is classified: 13-19 digits
//!   passing the Luhn check is a `card`; a `phone` is 7-15 digits after a `+`, or 9-15 digits in
//!   two or more groups of 2-4 digits. Any other run (a 16-digit number failing Luhn, a date, a
//!   price) is left untouched, and no shorter part of it is tried again as a number.
//! - `redact_patterns`, in their configured order.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::{Anchored, Input, MatchKind};

/// Largest DFA one pattern may compile to; a pattern past it is refused at start-up.
const DFA_SIZE_LIMIT: usize = 8 << 20;

pub(super) const EMAIL: &str =
    r"(?-u:\b)[A-Za-z0-9_][A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}";
pub(super) const NUMBER: &str = r"(?:\+|\()?(?-u:\b)[0-9]+(?:(?:[ .\-]|\) ?| ?\()[0-9]+)*";

/// How a detector's match becomes a redaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Every match is redacted.
    Always,
    /// The match is a number run: card, phone or neither.
    Number,
}

/// One compiled kind.
#[derive(Debug)]
pub struct Detector {
    /// The marker's label (`email`, or a pattern's name); numbers use `card` or `phone`.
    pub name: String,
    dfa: dense::DFA<Vec<u32>>,
    class: Class,
}

/// A detector's verdict on its match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Left as it is.
    No,
    /// Redacted under the detector's name.
    Named,
    /// Redacted under this kind.
    As(&'static str),
}

/// What an anchored scan from a position found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No match from here can end later than what was read; the longest (preferred) match end.
    Dead(Option<usize>),
    /// More text could still make (or extend) a match; the preferred match end so far.
    Alive(Option<usize>),
}

impl Detector {
    fn new(name: &str, pattern: &str, class: Class) -> Result<Self, String> {
        let config = dense::Config::new()
            .match_kind(MatchKind::LeftmostFirst)
            .start_kind(StartKind::Anchored)
            .dfa_size_limit(Some(DFA_SIZE_LIMIT))
            .determinize_size_limit(Some(DFA_SIZE_LIMIT));
        let dfa = dense::Builder::new()
            .configure(config)
            .build(pattern)
            .map_err(|e| format!("pattern {name:?} cannot be used: {e}"))?;
        let d = Detector { name: name.into(), dfa, class };
        if let Scan::Dead(Some(_)) = d.scan(b"", 0, true) {
            return Err(format!("pattern {name:?} matches empty text"));
        }
        Ok(d)
    }

    /// The built-in e-mail detector.
    pub fn email() -> Self {
        Self::new("email", EMAIL, Class::Always).expect("the built-in e-mail pattern compiles")
    }

    /// The built-in number detector (cards and phones).
    pub fn number() -> Self {
        Self::new("number", NUMBER, Class::Number).expect("the built-in number pattern compiles")
    }

    /// A configured pattern.
    pub fn pattern(name: &str, regex: &str) -> Result<Self, String> {
        Self::new(name, regex, Class::Always)
    }

    /// Whether a match that this detector declines stops it from starting again inside it.
    pub fn skips_declined(&self) -> bool {
        self.class == Class::Number
    }

    /// Runs the DFA anchored at `p` over `hay[p..]` (with `hay[..p]` as look-behind). `eoi`: the
    /// text ends here (the turn's end), so end-of-text assertions resolve.
    pub fn scan(&self, hay: &[u8], p: usize, eoi: bool) -> Scan {
        let input = Input::new(hay).range(p..).anchored(Anchored::Yes);
        let Ok(mut sid) = self.dfa.start_state_forward(&input) else { return Scan::Dead(None) };
        let mut last = None;
        for (i, &b) in hay[p..].iter().enumerate() {
            sid = self.dfa.next_state(sid, b);
            if self.dfa.is_special_state(sid) {
                if self.dfa.is_match_state(sid) {
                    last = Some(p + i);
                } else if self.dfa.is_dead_state(sid) || self.dfa.is_quit_state(sid) {
                    return Scan::Dead(last);
                }
            }
        }
        if !eoi {
            // A match state reports the match that ended one byte before; when no byte can
            // lead on from it (nor the end of text), the match is final now, not one delta later.
            if self.dfa.is_match_state(sid) && self.settled(sid) {
                return Scan::Dead(last);
            }
            return Scan::Alive(last);
        }
        sid = self.dfa.next_eoi_state(sid);
        if self.dfa.is_match_state(sid) {
            last = Some(hay.len());
        }
        Scan::Dead(last)
    }

    /// No byte leads on from `sid`, and no match ends at the end of text.
    fn settled(&self, sid: regex_automata::util::primitives::StateID) -> bool {
        (0..=255u8).all(|b| self.dfa.is_dead_state(self.dfa.next_state(sid, b)))
            && !self.dfa.is_match_state(self.dfa.next_eoi_state(sid))
    }

    /// Whether a match of this detector is redacted, and under which label.
    pub fn accept(&self, text: &str) -> Accept {
        match self.class {
            Class::Always => Accept::Named,
            Class::Number => classify_number(text).map_or(Accept::No, Accept::As),
        }
    }
}

/// `card`, `phone` or neither, for a number run (see the module doc).
pub(super) fn classify_number(run: &str) -> Option<&'static str> {
    let digits: Vec<u8> = run.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    let n = digits.len();
    if (13..=19).contains(&n) && luhn(&digits) {
        return Some("card");
    }
    if run.starts_with('+') {
        return (7..=15).contains(&n).then_some("phone");
    }
    let groups: Vec<usize> = run.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).map(str::len).collect();
    let grouped = groups.len() >= 2 && groups.iter().all(|g| (2..=4).contains(g));
    ((9..=15).contains(&n) && grouped).then_some("phone")
}

/// The Luhn checksum of payment card numbers.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_a_changed_digit() {
        let d = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn(&d("4111111111111111")));
        assert!(luhn(&d("5555555555554444")));
        assert!(luhn(&d("378282246310005")));
        assert!(!luhn(&d("4111111111111112")));
    }

    #[test]
    fn number_runs_are_classified_by_digits_groups_and_luhn() {
        assert_eq!(classify_number("4111 1111 1111 1111"), Some("card"));
        assert_eq!(classify_number("4111-1111-1111-1112"), None, "16 digits failing Luhn");
        assert_eq!(classify_number("+1 555 123 4567"), Some("phone"));
        assert_eq!(classify_number("(555) 123-4567"), Some("phone"));
        assert_eq!(classify_number("020 7946 0958"), Some("phone"));
        assert_eq!(classify_number("2024-01-15"), None, "a date");
        assert_eq!(classify_number("3.14159265"), None, "a decimal");
        assert_eq!(classify_number("1 2 3 4 5 6 7 8 9"), None);
        assert_eq!(classify_number("1700000000"), None, "a bare number");
    }

    #[test]
    fn a_scan_knows_a_match_that_could_still_grow_from_one_that_ended() {
        let e = Detector::email();
        // A DFA reports a match one byte late: whether `a@b.co` ends here is known with the
        // next character (or the end of the text).
        assert_eq!(e.scan(b"a@b.co", 0, false), Scan::Alive(None));
        assert_eq!(e.scan(b"a@b.co.", 0, false), Scan::Alive(Some(6)));
        assert_eq!(e.scan(b"a@b.com ", 0, false), Scan::Dead(Some(7)));
        assert_eq!(e.scan(b"a@b.co", 0, true), Scan::Dead(Some(6)));
        assert_eq!(e.scan(b"xa@b.co ", 1, false), Scan::Dead(None), "not at a word start");
        assert_eq!(e.scan(b"hello", 0, false), Scan::Alive(None));
        assert_eq!(e.scan(b"hello ", 0, false), Scan::Dead(None));
    }

    #[test]
    fn a_pattern_that_matches_empty_text_or_uses_unicode_word_boundaries_is_refused() {
        assert!(Detector::pattern("x", "a*").unwrap_err().contains("empty"));
        assert!(Detector::pattern("x", r"\bword\b").is_err());
        assert!(Detector::pattern("x", r"(?-u:\b)word(?-u:\b)").is_ok());
    }
}

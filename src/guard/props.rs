//! Property tests of the redaction filter: for random texts holding e-mail addresses, phone
//! numbers, Luhn-valid card numbers (and decoys: numbers failing Luhn, dates), split into deltas
//! at every boundary and at random ones, the filter's output equals a whole-text reference run
//! by another engine of the regex crate (the meta regex, anchored at each position), and no raw
//! value appears in any prefix of what it released.

use std::sync::Arc;

use proptest::prelude::*;
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

use super::detect::{classify_number, EMAIL, NUMBER};
use super::redact::{Redactor, Rules};
use super::settings::{GuardSettings, RedactPattern};

const TICKET: &str = "TCK-[0-9]{6}";
const MAX_HOLD: usize = 64;

/// The whole-text semantics, independently: at each position the first detector (in order)
/// whose anchored match it accepts wins; a declined number run is not tried again inside.
fn reference(text: &str) -> String {
    let dets = [("email", EMAIL, false), ("number", NUMBER, true), ("ticket", TICKET, false)]
        .map(|(n, re, number)| (n, Regex::new(re).unwrap(), number));
    let mut skip = [0usize; 3];
    let (mut out, mut p) = (String::new(), 0);
    'pos: while p < text.len() {
        for (i, (name, re, number)) in dets.iter().enumerate() {
            if p < skip[i] {
                continue;
            }
            let Some(m) = re.find(Input::new(text).range(p..).anchored(Anchored::Yes)) else { continue };
            if m.end() == p {
                continue;
            }
            let label = if *number {
                match classify_number(&text[p..m.end()]) {
                    Some(k) => k,
                    None => {
                        skip[i] = m.end();
                        continue;
                    }
                }
            } else {
                name
            };
            out.push_str(&format!("[redacted:{label}]"));
            p = m.end();
            continue 'pos;
        }
        let c = text[p..].chars().next().unwrap();
        out.push(c);
        p += c.len_utf8();
    }
    out
}

fn filter() -> Redactor {
    let s = GuardSettings {
        redact: true,
        redact_patterns: vec![RedactPattern { name: "ticket".into(), regex: TICKET.into() }],
        ..Default::default()
    };
    Redactor::new(Arc::new(Rules::build(&s).unwrap()), MAX_HOLD)
}

/// Runs the filter over `pieces`; returns its output after each piece and at the end.
fn stream(pieces: &[&str]) -> Vec<String> {
    let mut r = filter();
    let mut out = String::new();
    let mut seen = Vec::new();
    for piece in pieces {
        r.push(piece, &mut out);
        assert!(r.held_chars() <= MAX_HOLD, "held {} chars", r.held_chars());
        seen.push(out.clone());
    }
    r.finish(&mut out);
    seen.push(out);
    seen
}

fn luhn_digit(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
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
    ((10 - sum % 10) % 10) as u8
}

/// A card number: 15 random digits and its Luhn digit (or, `valid` false, a wrong one).
fn card(valid: bool) -> impl Strategy<Value = String> {
    (proptest::collection::vec(0u8..10, 15), 0usize..3).prop_map(move |(mut body, sep)| {
        body[0] = 4;
        let check = luhn_digit(&body);
        body.push(if valid { check } else { (check + 1) % 10 });
        let digits: String = body.iter().map(|d| char::from(b'0' + d)).collect();
        let sep = ["", " ", "-"][sep];
        digits.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(sep)
    })
}

fn email() -> impl Strategy<Value = String> {
    ("[a-z0-9]{1,6}(\\.[a-z0-9_+]{1,5})?", "[a-z0-9]{1,8}(-[a-z0-9]{1,4})?", "(\\.[a-z]{2,5}){1,2}")
        .prop_map(|(l, d, t)| format!("{l}@{d}{t}"))
}

fn phone() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\+[1-9][0-9]{0,2} [0-9]{3} [0-9]{3} [0-9]{4}",
        "\\([0-9]{3}\\) [0-9]{3}-[0-9]{4}",
        "[0-9]{3}-[0-9]{3}-[0-9]{4}",
        "0[0-9]{2} [0-9]{4} [0-9]{4}",
    ]
}

/// A value and whether it is raw data that must never come out.
fn value() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        email().prop_map(|v| (v, true)),
        phone().prop_map(|v| (v, true)),
        card(true).prop_map(|v| (v, true)),
        "TCK-[0-9]{6}".prop_map(|v| (v, true)),
        card(false).prop_map(|v| (v, false)),
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]".prop_map(|v| (v, false)),
    ]
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-zA-Z]{1,8}", 1 => "(café|日本|naïve|🚀|x@|a.b|-|42)"]
}

fn gap() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(" "), 1 => Just(", "), 1 => Just(". "), 1 => Just("\n")].prop_map(String::from)
}

/// Words and values, a value always between words, so that no two values run together.
fn text() -> impl Strategy<Value = (String, Vec<String>)> {
    proptest::collection::vec((word(), gap(), proptest::option::of(value()), gap()), 1..8).prop_map(|parts| {
        let (mut text, mut raw) = (String::new(), Vec::new());
        for (w, g1, v, g2) in parts {
            text.push_str(&w);
            text.push_str(&g1);
            if let Some((v, secret)) = v {
                text.push_str(&v);
                text.push_str(&g2);
                if secret {
                    raw.push(v);
                }
            }
        }
        (text, raw)
    })
}

fn boundaries(text: &str) -> Vec<usize> {
    (1..text.len()).filter(|&i| text.is_char_boundary(i)).collect()
}

fn check(text: &str, raw: &[String], pieces: &[&str], expected: &str) -> Result<(), TestCaseError> {
    let seen = stream(pieces);
    prop_assert_eq!(seen.last().unwrap().as_str(), expected, "pieces {:?}", pieces);
    for out in &seen {
        for r in raw {
            prop_assert!(!out.contains(r.as_str()), "{r:?} leaked in {out:?} (text {text:?}, pieces {pieces:?})");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_split_gives_the_whole_text_redaction_and_never_leaks_a_value((text, raw) in text(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let expected = reference(&text);
        for r in &raw {
            prop_assert!(!expected.contains(r.as_str()), "the reference missed {r:?} in {text:?}: {expected:?}");
        }
        // Every single boundary.
        for b in boundaries(&text) {
            check(&text, &raw, &[&text[..b], &text[b..]], &expected)?;
        }
        // One character per delta.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        check(&text, &raw, &chars.iter().map(String::as_str).collect::<Vec<_>>(), &expected)?;
        // Random boundaries.
        let all = boundaries(&text);
        if !all.is_empty() {
            let mut at: Vec<usize> = cuts.iter().map(|i| all[i.index(all.len())]).collect();
            at.sort_unstable();
            at.dedup();
            let mut pieces = Vec::new();
            let mut from = 0;
            for b in at.into_iter().chain([text.len()]) {
                pieces.push(&text[from..b]);
                from = b;
            }
            check(&text, &raw, &pieces, &expected)?;
        }
    }
}

#[test]
fn the_reference_agrees_with_the_examples() {
    assert_eq!(
        reference("mail a@b.com or 4111 1111 1111 1111, not 4111 1111 1111 1112"),
        "mail [redacted:email] or [redacted:card], not 4111 1111 1111 1112"
    );
}

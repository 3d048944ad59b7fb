//! What the redaction filter costs per delivered token, and what it holds back.
//!
//! A realistic answer stream: English prose cut into 4-character tokens (what a BPE tokenizer
//! gives on average), with an e-mail address, a phone number or a card number (and a decoy that
//! fails Luhn) every ~60 tokens. Each run pushes the stream through one turn's filter (`push`
//! per token, `finish` at each answer's end) and divides the time by the token count; the median
//! of the runs is reported, for the built-in kinds alone and with three configured patterns.
//! It also reports how much text the filter holds after a token on average, which is the text
//! that waits for the next delta.
//!
//! Run: `cargo run --release --example redaction_cost -- [TOKENS] [RUNS]` (default 400000, 7).

use std::sync::Arc;
use std::time::Instant;

use chatfleet::guard::redact::{Redactor, Rules};
use chatfleet::guard::{GuardSettings, RedactPattern};

const PROSE: &str = "The quick answer depends on what you measure. In most deployments the \
    latency of the first token matters more than the throughput of the rest, because people \
    read as the text arrives. If you need more detail, the documentation covers each setting \
    and the trade-offs between them, with examples for small and large installations. ";
const VALUES: [&str; 5] = [
    "jane.doe@example.com",
    "+1 555 123 4567",
    "4111 1111 1111 1111",
    "order 4111 1111 1111 1112 shipped",
    "(555) 987-6543",
];

/// About `n` tokens of 4 characters (the last of an answer may be shorter), in answers of ~300.
fn answers(n: usize) -> Vec<Vec<String>> {
    let mut text = String::new();
    let mut i = 0;
    while text.chars().count() < n * 4 {
        text.push_str(PROSE);
        text.push_str("Contact ");
        text.push_str(VALUES[i % VALUES.len()]);
        text.push_str(" for help. ");
        i += 1;
    }
    let chars: Vec<char> = text.chars().collect();
    let tokens: Vec<String> = chars.chunks(4).take(n).map(|c| c.iter().collect()).collect();
    tokens.chunks(300).map(<[String]>::to_vec).collect()
}

fn settings(patterns: usize) -> GuardSettings {
    let all = [
        ("ticket", "TCK-[0-9]{6}"),
        ("iban", "[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){3,7}"),
        ("key", "sk-[A-Za-z0-9]{20,}"),
    ];
    GuardSettings {
        redact: true,
        redact_patterns: all[..patterns]
            .iter()
            .map(|(n, r)| RedactPattern { name: n.to_string(), regex: r.to_string() })
            .collect(),
        ..Default::default()
    }
}

/// One run: (ns per token, mean chars held after a token, redactions).
fn run(rules: &Arc<Rules>, answers: &[Vec<String>], tokens: usize) -> (f64, f64, usize) {
    let mut held_sum = 0usize;
    let mut out = String::new();
    let mut markers = 0;
    let started = Instant::now();
    for answer in answers {
        let mut r = Redactor::new(rules.clone(), 64);
        for t in answer {
            r.push(t, &mut out);
            held_sum += r.held_chars();
        }
        r.finish(&mut out);
        markers += out.matches("[redacted:").count();
        out.clear();
    }
    let ns = started.elapsed().as_nanos() as f64 / tokens as f64;
    (ns, held_sum as f64 / tokens as f64, markers)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map_or(400_000, |a| a.parse().expect("TOKENS is a number"));
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("RUNS is a number"));
    let answers = answers(tokens);
    let tokens: usize = answers.iter().map(Vec::len).sum();
    for patterns in [0, 3] {
        let rules = Arc::new(Rules::build(&settings(patterns)).expect("the patterns compile"));
        let mut results: Vec<(f64, f64, usize)> = (0..runs).map(|_| run(&rules, &answers, tokens)).collect();
        results.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (median, held, markers) = results[runs / 2];
        let all: Vec<String> = results.iter().map(|r| format!("{:.0}", r.0)).collect();
        println!(
            "built-in kinds + {patterns} patterns: median {median:.0} ns/token over {runs} runs of {tokens} tokens \
             (sorted: {}); {held:.2} chars held after a token on average; {markers} redactions per run",
            all.join(", ")
        );
    }
}

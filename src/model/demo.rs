//! The built-in demo model: a readable Markdown answer (a heading, a list, a code block and a
//! table about the prompt and chatfleet), streamed at a configured time to first token and token
//! rate, so the whole system runs without an API key and tests know the exact answer in advance.
//!
//! Directives in the user's message drive failure paths, for tests and demos:
//! - `[[fail]]`: every attempt fails before the first token (an unavailable upstream);
//! - `[[fail-once]]`: the first attempt of each worker process fails before the first token;
//! - `[[fail-mid]]`: the stream fails after three tokens;
//! - `[[silent-ms=N]]`: the first token comes after N ms instead of the configured TTFT.

use std::time::Duration;

use futures::stream::{self, StreamExt};

use serde::Deserialize;

use super::{Model, ModelError, ModelEvent, ModelRequest, ModelStream, ModelUsage};

/// `[model.demo]`: the built-in deterministic demo model. Defined here, next to the model, and
/// re-exported by [`crate::settings`]; this module takes nothing from the settings tree.
#[derive(Debug, Clone, Deserialize)]
pub struct DemoModelSettings {
    /// Delay before the first token.
    pub ttft_ms: u64,
    /// Token rate after the first token; 0 streams as fast as possible.
    pub tokens_per_sec: u64,
    /// Tokens per answer (0 gives an empty answer, useful for dispatch benchmarks).
    pub max_tokens: usize,
}

/// The demo model.
#[derive(Debug, Clone)]
pub struct DemoModel {
    settings: DemoModelSettings,
}

impl DemoModel {
    pub fn new(settings: DemoModelSettings) -> Self {
        Self { settings }
    }
}

/// What the demo writes about: the prompt when it has words, else chatfleet itself.
fn topic(prompt: &str) -> String {
    let words: Vec<&str> =
        prompt.split_whitespace().filter(|w| !(w.starts_with("[[") && w.ends_with("]]"))).take(8).collect();
    match words.join(" ") {
        t if t.is_empty() => "chatfleet".into(),
        t => t.chars().take(60).collect(),
    }
}

/// Facts the list draws from, in the order the prompt's hash picks.
const FACTS: [&str; 6] = [
    "Gateways hold the sockets and fan out each delta to every tab of a session.",
    "Workers claim turns from Redis Streams and stream the model — résumé included.",
    "Every state change is one Redis Function call, so a takeover never duplicates text.",
    "A client that reconnects replays the session log from its last `seq`.",
    "Deltas are coalesced every few ms, so a fast model costs few frames 🚀.",
    "Text is UTF-8 end to end: naïve café 日本語 arrive whole.",
];

/// Rows of the table: stage, where it runs, what bounds it.
const ROWS: [(&str, &str, &str); 4] = [
    ("queue", "Redis Stream per partition", "admission control"),
    ("generation", "worker", "lease and heartbeat"),
    ("fan-out", "gateway", "per-socket send queue"),
    ("replay", "session log", "`session.log_max_events`"),
];

/// More sentences, for answers longer than the document.
const MORE: [&str; 4] = [
    "This answer is written by the built-in demo model, which needs no API key.",
    "The same prompt always gets the same answer, so tests know it in advance.",
    "Point `[upstreams]` at a real model to get real answers.",
    "Stop a turn at any time: the worker drops the upstream stream at once.",
];

/// The demo answer to `prompt` as Markdown: a heading, a list, a code block and a table about
/// the prompt and chatfleet, then more sentences as long as asked.
fn document(prompt: &str, seed: u32, min_tokens: usize) -> String {
    let topic = topic(prompt);
    let mut doc = format!("## {topic}\n\nThe **Demo model** answers _{topic}_ with how chatfleet streams it:\n\n");
    for i in 0..3 {
        doc += &format!("- {}\n", FACTS[(seed as usize + i * 2) % FACTS.len()]);
    }
    let partition = seed % 64;
    doc += &format!(
        "\n```toml\n[redis]\npartitions = 64  # this session lives in p{partition:02}\n```\n\n| stage | where | bounded by |\n|---|---|---|\n"
    );
    for (stage, place, bound) in ROWS {
        doc += &format!("| {stage} | {place} | {bound} |\n");
    }
    // Counted as it grows: recounting the whole document per sentence is quadratic, and tests
    // ask for answers of 100,000 tokens.
    let mut words = doc.split_whitespace().count();
    let mut i = seed as usize;
    while words < min_tokens {
        let more = MORE[i % MORE.len()];
        doc += &format!("\n{more}");
        words += more.split_whitespace().count();
        i += 1;
    }
    doc
}

/// Splits text into tokens: each is a run of non-space characters with the spaces and newlines
/// after it, so the tokens concatenate back to the text.
fn split_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev_space = false;
    for c in text.chars() {
        let space = c.is_whitespace();
        match out.last_mut() {
            Some(t) if space || !prev_space => t.push(c),
            _ => out.push(c.to_string()),
        }
        prev_space = space;
    }
    out
}

/// The tokens of the demo answer to `prompt`: the same prompt always gives the same answer,
/// exactly `max_tokens` tokens long. Tokens include multi-byte characters on purpose.
pub fn tokens_for(prompt: &str, max_tokens: usize) -> Vec<String> {
    if max_tokens == 0 {
        return Vec::new();
    }
    let seed = prompt.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let mut out = split_tokens(&document(prompt, seed, max_tokens));
    out.truncate(max_tokens);
    out
}

/// The full demo answer to `prompt`.
pub fn answer_for(prompt: &str, max_tokens: usize) -> String {
    tokens_for(prompt, max_tokens).concat()
}

/// Attempts of `[[fail-once]]` prompts seen by this process, so the first one fails.
static FAIL_ONCE_SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);

fn first_time(prompt: &str) -> bool {
    let mut seen = FAIL_ONCE_SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.get_or_insert_with(Default::default).insert(prompt.to_string())
}

fn directive_ms(prompt: &str, name: &str) -> Option<u64> {
    let start = prompt.find(&format!("[[{name}="))? + name.len() + 3;
    let end = prompt[start..].find("]]")? + start;
    prompt[start..end].parse().ok()
}

impl Model for DemoModel {
    fn name(&self) -> &str {
        "demo"
    }

    fn stream(&self, req: ModelRequest) -> ModelStream {
        let prompt = req.prompt().to_string();
        if prompt.contains("[[fail]]") || (prompt.contains("[[fail-once]]") && first_time(&prompt)) {
            let ttft = Duration::from_millis(self.settings.ttft_ms);
            return stream::once(async move {
                tokio::time::sleep(ttft).await;
                Err(ModelError::Unavailable("demo upstream refused the request ([[fail]])".into()))
            })
            .boxed();
        }
        let fail_mid = prompt.contains("[[fail-mid]]");
        let prompt_tokens = req.messages.iter().map(|m| m.text.len() as u64 / 4 + 1).sum();
        let max = req.route.max_tokens.map_or(self.settings.max_tokens, |m| (m as usize).min(self.settings.max_tokens));
        let tokens = tokens_for(&prompt, max);
        let completion_tokens = tokens.len() as u64;
        let ttft = Duration::from_millis(directive_ms(&prompt, "silent-ms").unwrap_or(self.settings.ttft_ms));
        let gap = match self.settings.tokens_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_micros(1_000_000 / rate),
        };
        let body = stream::iter(tokens.into_iter().enumerate()).then(move |(i, t)| async move {
            let wait = if i == 0 { ttft } else { gap };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if fail_mid && i == 3 {
                return Err(ModelError::Failed("demo upstream broke mid-answer ([[fail-mid]])".into()));
            }
            Ok(ModelEvent::Text(t))
        });
        let done = stream::once(async move {
            Ok(ModelEvent::Done(ModelUsage { prompt_tokens, completion_tokens, estimated: false }))
        });
        body.chain(done).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_and_sized() {
        assert_eq!(answer_for("hi", 50), answer_for("hi", 50));
        assert_ne!(answer_for("hi", 50), answer_for("ho", 50));
        assert_eq!(tokens_for("hi", 50).len(), 50);
        assert!(tokens_for("hi", 0).is_empty());
        assert_eq!(tokens_for("hi", 500).len(), 500, "longer answers keep going");
        assert_eq!(tokens_for("flood", 100_000).len(), 100_000, "as long as the slow-client test asks");
    }

    #[test]
    fn the_answer_is_markdown_with_a_heading_a_list_a_code_block_and_a_table() {
        let a = answer_for("How do leases work?", 120);
        assert!(a.starts_with("## How do leases work?\n\n"), "{a}");
        assert_eq!(a.lines().filter(|l| l.starts_with("- ")).count(), 3, "{a}");
        assert_eq!(a.matches("```").count(), 2, "{a}");
        assert_eq!(a.lines().filter(|l| l.starts_with('|')).count(), 6, "{a}");
        assert_eq!(tokens_for("How do leases work?", 120).concat(), a);
        assert!(answer_for("", 120).starts_with("## chatfleet\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_honours_ttft_and_rate() {
        let m = DemoModel::new(DemoModelSettings { ttft_ms: 200, tokens_per_sec: 10, max_tokens: 3 });
        let start = tokio::time::Instant::now();
        let req = ModelRequest::default();
        let events: Vec<_> = m.stream(req).collect().await;
        assert_eq!(events.len(), 4);
        // 200 ms to the first token, then 100 ms per token.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        assert!(matches!(events[3], Ok(ModelEvent::Done(ModelUsage { completion_tokens: 3, .. }))));
    }
}

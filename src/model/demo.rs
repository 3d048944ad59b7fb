//! The built-in demo model: deterministic Markdown text, streamed at a configured time to first
//! token and token rate, so the whole system runs without an API key and tests know the exact
//! answer in advance.
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

const WORDS: &[&str] = &[
    "streaming",
    "tokens",
    "arrive",
    "smoothly",
    "over",
    "Redis",
    "Streams",
    "while",
    "workers",
    "claim",
    "turns",
    "and",
    "gateways",
    "fan",
    "out",
    "deltas",
    "to",
    "every",
    "tab",
    "—",
    "résumé",
    "naïve",
    "café",
    "🚀",
    "日本語",
    "fast",
    "and",
    "exact",
];

/// The tokens of the demo answer to `prompt`: the same prompt always gives the same answer.
/// Tokens are words with their following space, and include multi-byte characters on purpose.
pub fn tokens_for(prompt: &str, max_tokens: usize) -> Vec<String> {
    if max_tokens == 0 {
        return Vec::new();
    }
    let mut seed = prompt.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let echo: String = prompt.chars().take(60).collect();
    let mut out = vec![
        "**Demo".to_string(),
        " model** ".to_string(),
        "answering: ".to_string(),
        format!("_{}_", echo.trim()),
        "\n\n".to_string(),
    ];
    while out.len() < max_tokens {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let word = WORDS[(seed as usize) % WORDS.len()];
        let sep = if out.len() % 17 == 16 { ".\n\n" } else { " " };
        out.push(format!("{word}{sep}"));
    }
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

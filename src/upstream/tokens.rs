//! Counting prompt tokens for an upstream's budget.
//!
//! OpenAI models get their real tokenizer (`tiktoken-rs`, whose BPE tables ship inside the crate,
//! so nothing is downloaded at run time). Other models (Anthropic's, open-weight ones behind
//! llama.cpp or vLLM) have no tokenizer we can run here, so they get an approximation that
//! over-counts on purpose: `ceil(utf8_bytes / context.approx_bytes_per_token)`, see
//! [`crate::upstream::settings::ContextSettings::approx_bytes_per_token`] for the margin.
//!
//! Both counts are bounded by the text's byte length (a byte-level BPE token covers at least one
//! byte), which lets packing skip counting entirely when everything fits by bytes alone.

use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

use super::settings::{ContextSettings, TokenizerKind, UpstreamKind, UpstreamSettings};
use crate::model::{ChatMessage, ToolSpec};

/// Tokens a chat format adds around each message (role markers); OpenAI's documented figure is
/// 3, rounded up here to stay on the safe side for other templates.
pub const MESSAGE_OVERHEAD: u64 = 4;

/// Tokens kept for each attachment an upstream takes by URL. The upstream counts the media
/// itself and the size is unknown here; OpenAI bills a high-detail image of up to 2,048 px at
/// 1,105 tokens at most, so that is held, rounded up.
pub const ATTACHMENT_TOKENS: u64 = 1_200;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`).
pub const REPLY_OVERHEAD: u64 = 3;

/// A token counter for one upstream.
#[derive(Clone, Copy)]
pub enum Counter {
    Bpe(&'static CoreBPE),
    Approx { bytes_per_token: f64 },
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bpe(_) => f.write_str("Counter::Bpe"),
            Self::Approx { bytes_per_token } => write!(f, "Counter::Approx({bytes_per_token})"),
        }
    }
}

impl Counter {
    /// The counter an upstream's settings ask for.
    pub fn for_upstream(u: &UpstreamSettings, c: &ContextSettings) -> Self {
        let approx = Self::Approx { bytes_per_token: c.approx_bytes_per_token };
        let bpe = |t| Self::Bpe(tiktoken_rs::bpe_for_tokenizer(t).expect("tiktoken ships this table"));
        match u.tokenizer {
            TokenizerKind::O200kBase => bpe(Tokenizer::O200kBase),
            TokenizerKind::Cl100kBase => bpe(Tokenizer::Cl100kBase),
            TokenizerKind::Approx => approx,
            TokenizerKind::Auto if u.kind == UpstreamKind::Openai => match get_tokenizer(&u.model) {
                Some(t @ (Tokenizer::O200kBase | Tokenizer::Cl100kBase)) => bpe(t),
                _ => approx,
            },
            TokenizerKind::Auto => approx,
        }
    }

    /// Tokens of a text.
    pub fn count_text(&self, text: &str) -> u64 {
        match self {
            Self::Bpe(bpe) => bpe.encode_ordinary(text).len() as u64,
            Self::Approx { .. } => self.upper_bound_for_bytes(text.len()),
        }
    }

    /// The most tokens a text of `bytes` UTF-8 bytes can count as.
    pub fn upper_bound_for_bytes(&self, bytes: usize) -> u64 {
        match self {
            Self::Bpe(_) => bytes as u64,
            Self::Approx { bytes_per_token } => (bytes as f64 / bytes_per_token).ceil() as u64,
        }
    }

    /// Tokens of a message, with its overhead.
    pub fn count_message(&self, m: &ChatMessage) -> u64 {
        let calls: u64 = m.tool_calls.iter().map(|c| self.count_text(&c.name) + self.count_text(&c.arguments)).sum();
        self.count_text(&m.text) + calls + ATTACHMENT_TOKENS * m.attachments.len() as u64 + MESSAGE_OVERHEAD
    }

    /// An upper bound of [`Self::count_message`] from byte lengths only.
    pub fn message_upper_bound(&self, m: &ChatMessage) -> u64 {
        let bytes = m.text.len() + m.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>();
        self.upper_bound_for_bytes(bytes) + ATTACHMENT_TOKENS * m.attachments.len() as u64 + MESSAGE_OVERHEAD
    }

    /// Tokens of the tool declarations (counted as the JSON they are sent as).
    pub fn count_tools(&self, tools: &[ToolSpec]) -> u64 {
        tools
            .iter()
            .map(|t| {
                self.count_text(&t.name) + self.count_text(&t.description) + self.count_text(&t.parameters.to_string())
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: UpstreamKind, model: &str) -> UpstreamSettings {
        let toml = format!(
            "kind = \"{}\"\nbase_url = \"http://x\"\nmodel = \"{model}\"",
            match kind {
                UpstreamKind::Openai => "openai",
                UpstreamKind::Anthropic => "anthropic",
                UpstreamKind::Demo => "demo",
            }
        );
        config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn openai_models_get_their_real_tokenizer_and_others_the_approximation() {
        let c = ContextSettings::default();
        let gpt = Counter::for_upstream(&upstream(UpstreamKind::Openai, "gpt-4o-mini"), &c);
        assert!(matches!(gpt, Counter::Bpe(_)));
        // "hello world" is two tokens in o200k_base.
        assert_eq!(gpt.count_text("hello world"), 2);
        let llama = Counter::for_upstream(&upstream(UpstreamKind::Openai, "llama-3.1-8b"), &c);
        assert!(matches!(llama, Counter::Approx { .. }));
        let claude = Counter::for_upstream(&upstream(UpstreamKind::Anthropic, "claude-sonnet-4"), &c);
        assert_eq!(claude.count_text("hello world"), 4, "11 bytes / 3, rounded up");
    }

    #[test]
    fn counts_never_exceed_the_byte_bound() {
        let gpt = Counter::for_upstream(&upstream(UpstreamKind::Openai, "gpt-4o"), &ContextSettings::default());
        for text in ["日本語のテキスト", "🚀🚀🚀 émojis", "plain english words here", "x"] {
            assert!(gpt.count_text(text) <= gpt.upper_bound_for_bytes(text.len()), "{text}");
        }
    }
}

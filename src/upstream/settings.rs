//! Settings of the model upstreams (`[upstreams.<name>]`), routing (`[routing]`) and context
//! packing (`[context]`). Defaults of per-upstream fields are the constants in [`defaults`], so an
//! upstream needs only `kind`, `base_url` and `model` in config.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings_base::SettingsError;

/// The wire format an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// OpenAI Chat Completions streaming (`POST {base_url}/chat/completions`): OpenAI, vLLM,
    /// llama.cpp's server, Ollama, TGI, LiteLLM and most hosted providers.
    Openai,
    /// Anthropic Messages streaming (`POST {base_url}/v1/messages`).
    Anthropic,
    /// The built-in demo model (`[model.demo]`), no network; the timeouts and the concurrency
    /// cap of an upstream do not apply to it (its `[[…]]` directives drive the failure paths).
    Demo,
}

/// How prompt tokens are counted for the upstream's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// The model's real tokenizer when `tiktoken-rs` knows the model name (OpenAI models),
    /// else the approximation.
    #[default]
    Auto,
    /// OpenAI's `o200k_base` (gpt-4o, gpt-4.1, o-series).
    O200kBase,
    /// OpenAI's `cl100k_base` (gpt-4, gpt-3.5).
    Cl100kBase,
    /// UTF-8 bytes / `context.approx_bytes_per_token`, rounded up, plus a per-message overhead.
    Approx,
}

/// Per-upstream defaults (documented here because an upstream table may omit them).
pub mod defaults {
    /// `connect_timeout_ms`: TCP and TLS handshake.
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// `first_token_timeout_ms`: request sent to first token; generous for long prompts.
    pub const FIRST_TOKEN_TIMEOUT_MS: u64 = 60_000;
    /// `idle_timeout_ms`: longest silence between two tokens.
    pub const IDLE_TIMEOUT_MS: u64 = 30_000;
    /// `total_timeout_ms`: one upstream request, start to end.
    pub const TOTAL_TIMEOUT_MS: u64 = 600_000;
    /// `max_concurrent`: requests in flight to this upstream from one worker process.
    pub const MAX_CONCURRENT: usize = 64;
    /// `queue_timeout_ms`: longest wait for a concurrency slot.
    pub const QUEUE_TIMEOUT_MS: u64 = 10_000;
    /// `context_tokens`: the model's context window.
    pub const CONTEXT_TOKENS: u64 = 131_072;
    /// `max_output_tokens`: the answer's limit, sent as `max_tokens` and kept free in the window.
    pub const MAX_OUTPUT_TOKENS: u64 = 4_096;
    /// `max_error_body_bytes`: most of an error response read (for the log).
    pub const MAX_ERROR_BODY_BYTES: usize = 16_384;
    /// `anthropic_version`: the `anthropic-version` header.
    pub const ANTHROPIC_VERSION: &str = "2023-06-01";
}

macro_rules! default_fn {
    ($name:ident, $ty:ty, $v:expr) => {
        fn $name() -> $ty {
            $v
        }
    };
}
default_fn!(d_connect, u64, defaults::CONNECT_TIMEOUT_MS);
default_fn!(d_first, u64, defaults::FIRST_TOKEN_TIMEOUT_MS);
default_fn!(d_idle, u64, defaults::IDLE_TIMEOUT_MS);
default_fn!(d_total, u64, defaults::TOTAL_TIMEOUT_MS);
default_fn!(d_conc, usize, defaults::MAX_CONCURRENT);
default_fn!(d_queue, u64, defaults::QUEUE_TIMEOUT_MS);
default_fn!(d_ctx, u64, defaults::CONTEXT_TOKENS);
default_fn!(d_out, u64, defaults::MAX_OUTPUT_TOKENS);
default_fn!(d_err, usize, defaults::MAX_ERROR_BODY_BYTES);
default_fn!(d_ver, String, defaults::ANTHROPIC_VERSION.into());
default_fn!(d_true, bool, true);

/// One named upstream (`[upstreams.<name>]`). Names are lowercase so environment variables
/// (`CHATFLEET__UPSTREAMS__<NAME>__API_KEY`) can reach them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub kind: UpstreamKind,
    /// `http(s)://host[:port][/prefix]`: OpenAI-compatible servers usually end in `/v1`
    /// (`/chat/completions` is appended); Anthropic's is `https://api.anthropic.com`
    /// (`/v1/messages` is appended).
    #[serde(default)]
    pub base_url: String,
    /// The model name sent upstream (and recorded on the turn).
    #[serde(default)]
    pub model: String,
    /// The API key. Never logged; prefer setting it through the environment, either as
    /// `CHATFLEET__UPSTREAMS__<NAME>__API_KEY` or by naming a variable in `api_key_env`.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Name of an environment variable holding the key (e.g. `OPENAI_API_KEY`), read at start.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "d_connect")]
    pub connect_timeout_ms: u64,
    #[serde(default = "d_first")]
    pub first_token_timeout_ms: u64,
    #[serde(default = "d_idle")]
    pub idle_timeout_ms: u64,
    #[serde(default = "d_total")]
    pub total_timeout_ms: u64,
    #[serde(default = "d_conc")]
    pub max_concurrent: usize,
    #[serde(default = "d_queue")]
    pub queue_timeout_ms: u64,
    #[serde(default = "d_ctx")]
    pub context_tokens: u64,
    #[serde(default = "d_out")]
    pub max_output_tokens: u64,
    #[serde(default)]
    pub tokenizer: TokenizerKind,
    #[serde(default = "d_err")]
    pub max_error_body_bytes: usize,
    /// OpenAI kind: ask for usage in the last chunk (`stream_options.include_usage`). Turn off
    /// for the rare server that refuses the field.
    #[serde(default = "d_true")]
    pub include_usage: bool,
    #[serde(default = "d_ver")]
    pub anthropic_version: String,
    /// Content types of attachments this upstream takes by URL (it fetches them itself):
    /// `image/*` types for OpenAI's `image_url` parts; images and `application/pdf` for
    /// Anthropic's URL sources. Attachments of other types reach it as a line of text naming
    /// them. Empty (the default): every attachment is described in text.
    #[serde(default)]
    pub media: Vec<String>,
}

impl UpstreamSettings {
    /// Tokens left for the prompt once the answer's room is kept free.
    pub fn prompt_budget(&self) -> u64 {
        self.context_tokens.saturating_sub(self.max_output_tokens)
    }
}

/// Which upstreams answer a turn (`[routing]`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// Upstreams tried in order when no rule matches: the first answers, the others are its
    /// fallback chain, used when one fails before its first token.
    pub default: Vec<String>,
    /// Rules, first match wins (`[[routing.rules]]`).
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// A routing rule: every condition given must hold. A `model` asked for in the send that no rule
/// names is answered by the default chain (the turn records which model really answered).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub tenant: Option<String>,
    /// A flag of the session (a member of the session's `<base>:flags` set).
    pub flag: Option<String>,
    /// The user's message has at least this many characters.
    pub min_message_chars: Option<usize>,
    /// The user's message has at most this many characters.
    pub max_message_chars: Option<usize>,
    /// The client asked for this model in its `send`.
    pub model: Option<String>,
    /// Upstreams to try, in order.
    pub chain: Vec<String>,
    /// A canary: a share of the sessions this rule matches goes to a variant
    /// (`[routing.rules.canary]`, see [`super::canary`]).
    #[serde(default)]
    pub canary: Option<Canary>,
}

/// A variant of a routing rule that a stable share of its sessions gets: another upstream chain,
/// another system prompt, or both. Rollback is `percent = 0`; a session keeps its side of the
/// split for its whole life, since the choice is a fixed hash of the session id.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The variant's name: the `variant` label of its metrics, the audit's template suffix and
    /// what `chatfleet ctl routes` shows (1-32 characters of `[a-z0-9_-]`, not `control`).
    pub name: String,
    /// Share of the rule's sessions that get the variant, 0.0..=100.0 in steps of 0.01
    /// (0 = rolled back, every session gets the rule's own chain and prompt).
    pub percent: f64,
    /// Upstreams the variant's sessions try, in order; empty keeps the rule's `chain`.
    #[serde(default)]
    pub chain: Vec<String>,
    /// The variant's system prompt, in place of `context.system_prompt`; absent keeps it.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Template version recorded on the variant's turns (the audit's `template`); absent
    /// records `context.template_version` followed by `+<name>`.
    #[serde(default)]
    pub template_version: Option<String>,
}

impl RouteRule {
    /// True when every condition of the rule holds for `h`.
    pub fn matches(&self, h: &crate::model::RouteHints) -> bool {
        self.tenant.as_ref().map_or(true, |t| *t == h.tenant)
            && self.flag.as_ref().map_or(true, |f| h.flags.contains(f))
            && self.min_message_chars.map_or(true, |n| h.message_chars >= n)
            && self.max_message_chars.map_or(true, |n| h.message_chars <= n)
            && self.model.as_ref().map_or(true, |m| h.model.as_ref() == Some(m))
    }
}

/// Prompt template and context packing (`[context]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSettings {
    /// The system prompt of every turn; empty sends none.
    pub system_prompt: String,
    /// Version of the prompt template (system prompt, summary instruction, tool set), recorded on
    /// every turn for audit. Change it whenever you change those.
    pub template_version: String,
    /// Summarise older history once this many turns are neither summarised nor among the
    /// `keep_recent_turns` newest; 0 turns summaries off.
    pub summarize_after_turns: u32,
    /// Newest turns always kept verbatim (never folded into the summary).
    pub keep_recent_turns: u32,
    /// Upstream that writes summaries; empty means the first of `routing.default`.
    pub summary_upstream: String,
    /// Instruction given to the summary call, followed by the previous summary and the messages.
    pub summary_instruction: String,
    /// Longest a summary call may take (it runs in the background, after the turn).
    pub summary_timeout_ms: u64,
    /// Largest stored summary, in bytes (cut at a character boundary).
    pub summary_max_bytes: usize,
    /// For the approximate token count: UTF-8 bytes per token. 3 over-counts English (about 4
    /// bytes per token) by a third, which is the safety margin, and is about right for CJK
    /// (3 bytes per character, about one token each).
    pub approx_bytes_per_token: f64,
}

impl Default for ContextSettings {
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            template_version: "v1".into(),
            summarize_after_turns: 0,
            keep_recent_turns: 4,
            summary_upstream: String::new(),
            summary_instruction: String::new(),
            summary_timeout_ms: 60_000,
            summary_max_bytes: 8192,
            approx_bytes_per_token: 3.0,
        }
    }
}

/// The key in environment variable `var`, if set and not empty (read once, at start).
pub fn key_from_env(var: &str) -> Option<SecretString> {
    std::env::var(var).ok().filter(|v| !v.is_empty()).map(SecretString::from)
}

fn invalid(key: &'static str, reason: String) -> SettingsError {
    SettingsError::Invalid { key, reason }
}

/// Checks the upstreams, routing and context sections (called by
/// [`crate::settings::Settings::validate`] with those sections and `session.max_message_bytes`).
/// `extra_pinned`: the bytes of another pinned system message every turn may carry (retrieval's
/// reference block), which must fit beside the system prompt and the longest message.
pub fn validate(
    upstreams: &UpstreamMap,
    routing: &RoutingSettings,
    context: &ContextSettings,
    max_message_bytes: usize,
    extra_pinned: Option<usize>,
) -> Result<(), SettingsError> {
    if upstreams.is_empty() {
        return Err(invalid("upstreams", "at least one upstream must be declared".into()));
    }
    for (name, u) in upstreams {
        let bad = |key, what: &str| Err(invalid(key, format!("upstream `{name}`: {what}")));
        if !crate::keys::is_valid_component(name) || name.to_lowercase() != *name {
            return bad("upstreams", "names are 1-64 lowercase characters of [a-z0-9_.-]");
        }
        if u.kind != UpstreamKind::Demo {
            if !(u.base_url.starts_with("http://") || u.base_url.starts_with("https://")) {
                return bad("upstreams.*.base_url", "must start with http:// or https://");
            }
            if u.model.is_empty() {
                return bad("upstreams.*.model", "must name the model sent upstream");
            }
            let takes = |t: &String| match u.kind {
                UpstreamKind::Openai => t.starts_with("image/"),
                _ => t.starts_with("image/") || t == "application/pdf",
            };
            if !u.media.iter().all(takes) {
                return bad("upstreams.*.media", "types this kind of upstream cannot take by URL");
            }
            if let (None, Some(var)) = (&u.api_key, &u.api_key_env) {
                if key_from_env(var).is_none() {
                    return bad("upstreams.*.api_key_env", &format!("the environment variable {var} is not set"));
                }
            }
        }
        for (key, v) in [
            ("upstreams.*.connect_timeout_ms", u.connect_timeout_ms),
            ("upstreams.*.first_token_timeout_ms", u.first_token_timeout_ms),
            ("upstreams.*.idle_timeout_ms", u.idle_timeout_ms),
            ("upstreams.*.total_timeout_ms", u.total_timeout_ms),
            ("upstreams.*.queue_timeout_ms", u.queue_timeout_ms),
            ("upstreams.*.max_output_tokens", u.max_output_tokens),
        ] {
            if v == 0 {
                return bad(key, "must be > 0");
            }
        }
        if u.max_concurrent == 0 {
            return bad("upstreams.*.max_concurrent", "must be at least 1");
        }
        // The system prompt and the longest allowed user message must always fit (see pack).
        let counter = super::tokens::Counter::for_upstream(u, context);
        let summary = match context.summarize_after_turns {
            0 => 0,
            _ => counter.upper_bound_for_bytes(context.summary_max_bytes + 64) + super::tokens::MESSAGE_OVERHEAD,
        };
        // The longest system prompt a turn may get: the context's or a canary's.
        let prompts = routing.rules.iter().filter_map(|r| r.canary.as_ref()?.system_prompt.as_deref());
        let prompt =
            prompts.chain([context.system_prompt.as_str()]).map(|p| counter.count_text(p)).max().unwrap_or_default();
        let pinned = prompt
            + extra_pinned.map_or(0, |bytes| counter.upper_bound_for_bytes(bytes) + super::tokens::MESSAGE_OVERHEAD)
            + counter.upper_bound_for_bytes(max_message_bytes)
            + 2 * super::tokens::MESSAGE_OVERHEAD
            + super::tokens::REPLY_OVERHEAD
            + summary;
        if pinned > u.prompt_budget() {
            return bad(
                "upstreams.*.context_tokens",
                &format!(
                    "context_tokens - max_output_tokens = {} cannot hold the system prompt and a \
                     message of session.max_message_bytes (and a summary, and retrieval's budget) \
                     ({pinned} tokens at most); \
                     raise it or lower session.max_message_bytes",
                    u.prompt_budget()
                ),
            );
        }
    }
    let known = |chain: &[String], key: &'static str| -> Result<(), SettingsError> {
        if chain.is_empty() {
            return Err(invalid(key, "must name at least one upstream".into()));
        }
        match chain.iter().find(|n| !upstreams.contains_key(*n)) {
            Some(n) => Err(invalid(key, format!("names `{n}`, which is not in [upstreams]"))),
            None => Ok(()),
        }
    };
    known(&routing.default, "routing.default")?;
    for rule in &routing.rules {
        known(&rule.chain, "routing.rules.chain")?;
        if let Some(c) = &rule.canary {
            super::canary::validate(c)?;
            if !c.chain.is_empty() {
                known(&c.chain, "routing.rules.canary.chain")?;
            }
        }
    }
    let c = context;
    if !c.summary_upstream.is_empty() && !upstreams.contains_key(&c.summary_upstream) {
        return Err(invalid("context.summary_upstream", format!("`{}` is not in [upstreams]", c.summary_upstream)));
    }
    if !(1.0..=8.0).contains(&c.approx_bytes_per_token) {
        return Err(invalid("context.approx_bytes_per_token", "must be 1.0..=8.0".into()));
    }
    if c.summarize_after_turns > 0 && c.keep_recent_turns == 0 {
        return Err(invalid("context.keep_recent_turns", "must be at least 1 when summaries are on".into()));
    }
    if c.summarize_after_turns > 0 && (c.summary_timeout_ms == 0 || c.summary_max_bytes < 64) {
        return Err(invalid(
            "context.summary_timeout_ms",
            "summaries need a timeout > 0 and summary_max_bytes >= 64".into(),
        ));
    }
    Ok(())
}

/// The upstreams section as parsed (`[upstreams.<name>]`).
pub type UpstreamMap = BTreeMap<String, UpstreamSettings>;

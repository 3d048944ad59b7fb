//! Settings of the output guardrails (`[guard]`, and per tenant `[tenants.<name>.guard]`).
//!
//! Both guards are off by default: redaction changes what users see, and moderation sends their
//! text to another service, so an operator turns each on knowingly.

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings_base::SettingsError;

/// A pattern of `redact_patterns`: text matching `regex` becomes `[redacted:<name>]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedactPattern {
    /// The marker's label: 1-32 characters of `[a-z0-9_-]`.
    pub name: String,
    /// A `regex` crate pattern. Matched as the stream goes, within `max_holdback_chars`.
    pub regex: String,
}

/// The `[guard]` section: global defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSettings {
    /// Redact e-mail addresses, phone numbers, payment card numbers (Luhn-checked) and
    /// `redact_patterns` in answers, before they are stored or sent (docs/guardrails.md).
    pub redact: bool,
    /// Extra patterns to redact, checked after the built-in kinds.
    #[serde(default)]
    pub redact_patterns: Vec<RedactPattern>,
    /// Most characters the redaction filter holds back while they could still become (or
    /// extend) a match. Past it the oldest held text is decided as if the stream had paused
    /// there, so a longer match (a configured pattern longer than this) is caught only within
    /// the bound. Held text waits for the next delta: this bounds that delay's size.
    pub max_holdback_chars: usize,
    /// Check the user's message before the turn and the answer in phrases with a moderation
    /// endpoint (OpenAI-compatible `POST {moderation_url}/moderations`).
    pub moderation: bool,
    /// Base URL of the moderation API, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub moderation_url: String,
    /// Bearer key of the moderation API (or `CHATFLEET__GUARD__MODERATION_API_KEY`); none sends
    /// no `Authorization` header.
    #[serde(default)]
    pub moderation_api_key: Option<SecretString>,
    /// The `model` of the moderation request.
    pub moderation_model: String,
    /// Longest one moderation call may take (connect, request and response).
    pub moderation_timeout_ms: u64,
    /// When the endpoint fails or times out: `true` goes on unchecked (counted in
    /// `chatfleet_guard_moderation_errors_total` and logged with the turn id), `false` ends the
    /// turn with `moderation_unavailable`.
    pub moderation_fail_open: bool,
    /// An answer phrase is checked when it reaches a sentence end, or this many characters.
    pub moderation_phrase_chars: usize,
    /// Phrase checks one turn runs at once; later text waits in the next phrase (which grows)
    /// instead of opening more requests.
    pub moderation_max_in_flight: usize,
    /// Largest response body read from the moderation endpoint.
    pub moderation_max_response_bytes: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            redact: false,
            redact_patterns: Vec::new(),
            max_holdback_chars: 64,
            moderation: false,
            moderation_url: String::new(),
            moderation_api_key: None,
            moderation_model: "omni-moderation-latest".into(),
            moderation_timeout_ms: 2_000,
            moderation_fail_open: true,
            moderation_phrase_chars: 400,
            moderation_max_in_flight: 2,
            moderation_max_response_bytes: 65_536,
        }
    }
}

/// What one tenant may override (`[tenants.<name>.guard]`); unset fields take `[guard]`'s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardOverride {
    pub redact: Option<bool>,
    /// Replaces (does not extend) the global `redact_patterns`.
    pub redact_patterns: Option<Vec<RedactPattern>>,
    pub moderation: Option<bool>,
    pub moderation_model: Option<String>,
    pub moderation_fail_open: Option<bool>,
}

impl GuardSettings {
    /// The settings for a tenant with `o` applied.
    pub fn with(&self, o: &GuardOverride) -> GuardSettings {
        let mut s = self.clone();
        s.redact = o.redact.unwrap_or(s.redact);
        if let Some(p) = &o.redact_patterns {
            s.redact_patterns = p.clone();
        }
        s.moderation = o.moderation.unwrap_or(s.moderation);
        if let Some(m) = &o.moderation_model {
            s.moderation_model = m.clone();
        }
        s.moderation_fail_open = o.moderation_fail_open.unwrap_or(s.moderation_fail_open);
        s
    }

    /// Checks ranges, the moderation URL when moderation is on, and that every pattern compiles
    /// within the filter's size limit.
    pub fn validate(&self, key: &'static str) -> Result<(), SettingsError> {
        let bad = |reason: String| Err(SettingsError::Invalid { key, reason });
        if !(8..=4096).contains(&self.max_holdback_chars) {
            return bad("max_holdback_chars must be 8..=4096".into());
        }
        if self.moderation {
            if !(self.moderation_url.starts_with("http://") || self.moderation_url.starts_with("https://")) {
                return bad("moderation_url must be an http:// or https:// URL when moderation is on".into());
            }
            if self.moderation_timeout_ms == 0 || self.moderation_timeout_ms > 60_000 {
                return bad("moderation_timeout_ms must be 1..=60000".into());
            }
            if self.moderation_phrase_chars < 16 {
                return bad("moderation_phrase_chars must be at least 16".into());
            }
            if !(1..=16).contains(&self.moderation_max_in_flight) {
                return bad("moderation_max_in_flight must be 1..=16".into());
            }
            if self.moderation_max_response_bytes < 256 {
                return bad("moderation_max_response_bytes must be at least 256".into());
            }
        }
        for p in &self.redact_patterns {
            let ok_name = (1..=32).contains(&p.name.len())
                && p.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !ok_name {
                return bad(format!("redact pattern name {:?}: 1-32 characters of [a-z0-9_-]", p.name));
            }
        }
        if let Err(e) = super::redact::Rules::build(self) {
            return bad(e);
        }
        Ok(())
    }
}

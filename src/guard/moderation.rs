//! The moderation client: one OpenAI-compatible `POST {moderation_url}/moderations` call per
//! check, `{"input": text, "model": model}`, answered by `results[0].flagged` and its
//! `categories`. Every call has the `guard.moderation_timeout_ms` deadline and a bounded
//! response body. The checked text is never logged.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::settings::GuardSettings;
use crate::metrics as m;

/// What the endpoint said about a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clear,
    /// Flagged, with the categories set to true (sorted).
    Flagged(Vec<String>),
}

/// Why a check has no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    #[error("the moderation endpoint did not answer within {0} ms")]
    Timeout(u64),
    #[error("the moderation request failed: {0}")]
    Http(String),
    #[error("the moderation endpoint answered status {0}")]
    Status(u16),
    #[error("the moderation response could not be read: {0}")]
    Body(String),
}

#[derive(Deserialize)]
struct Response {
    results: Vec<Result_>,
}

#[derive(Deserialize)]
struct Result_ {
    flagged: bool,
    #[serde(default)]
    categories: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The endpoint, shared by every turn of a worker.
#[derive(Debug)]
pub struct Moderator {
    client: reqwest::Client,
    url: String,
    key: Option<SecretString>,
    timeout_ms: u64,
    max_bytes: usize,
}

impl Moderator {
    pub fn new(s: &GuardSettings) -> Self {
        let timeout = Duration::from_millis(s.moderation_timeout_ms.max(1));
        let client = reqwest::Client::builder().connect_timeout(timeout).timeout(timeout).build().unwrap_or_default();
        Self {
            client,
            url: format!("{}/moderations", s.moderation_url.trim_end_matches('/')),
            key: s.moderation_api_key.clone(),
            timeout_ms: s.moderation_timeout_ms.max(1),
            max_bytes: s.moderation_max_response_bytes,
        }
    }

    /// Checks `input` with `model`; `stage` (`input` or `output`) labels the metrics.
    pub async fn check(&self, input: &str, model: &str, stage: &'static str) -> Result<Verdict, ModerationError> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.timeout_ms);
        let r = tokio::time::timeout_at(deadline, self.call(input, model)).await;
        metrics::histogram!(m::GUARD_MODERATION_SECONDS, "stage" => stage).record(started.elapsed().as_secs_f64());
        let r = r.unwrap_or(Err(ModerationError::Timeout(self.timeout_ms)));
        match &r {
            Ok(Verdict::Flagged(_)) => metrics::counter!(m::GUARD_MODERATION_FLAGGED, "stage" => stage).increment(1),
            Ok(Verdict::Clear) => {}
            Err(_) => metrics::counter!(m::GUARD_MODERATION_ERRORS, "stage" => stage).increment(1),
        }
        r
    }

    async fn call(&self, input: &str, model: &str) -> Result<Verdict, ModerationError> {
        let mut req = self.client.post(&self.url).json(&serde_json::json!({"input": input, "model": model}));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose_secret());
        }
        let mut resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                ModerationError::Timeout(self.timeout_ms)
            } else {
                ModerationError::Http(e.without_url().to_string())
            }
        })?;
        if !resp.status().is_success() {
            return Err(ModerationError::Status(resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| ModerationError::Body(e.without_url().to_string()))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(ModerationError::Body(format!("longer than {} bytes", self.max_bytes)));
            }
            body.extend_from_slice(&chunk);
        }
        let parsed: Response = serde_json::from_slice(&body).map_err(|e| ModerationError::Body(e.to_string()))?;
        let first = parsed.results.into_iter().next().ok_or_else(|| ModerationError::Body("no results".into()))?;
        if !first.flagged {
            return Ok(Verdict::Clear);
        }
        let categories =
            first.categories.into_iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k).collect();
        Ok(Verdict::Flagged(categories))
    }
}

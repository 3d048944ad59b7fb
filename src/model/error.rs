//! Why a model stream failed, and the client-visible `error` code each failure maps to.
//!
//! Messages here reach clients in `error` events, so they name what went wrong (a status, which
//! timeout) and never carry upstream bodies or credentials; the provider logs the detail once.

use std::time::Duration;

/// Which hop's timeout fired. Each is a setting per upstream (`upstreams.<name>.*_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Waiting for a concurrency slot of the upstream.
    Queue,
    /// Opening the TCP (and TLS) connection.
    Connect,
    /// From the request to the first generated token (or tool-call fragment).
    FirstToken,
    /// Silence between two tokens.
    Idle,
    /// The whole upstream request.
    Total,
}

impl TimeoutKind {
    /// The `error` event code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Queue => "upstream_queue_timeout",
            Self::Connect => "upstream_connect_timeout",
            Self::FirstToken => "upstream_first_token_timeout",
            Self::Idle => "upstream_idle_timeout",
            Self::Total => "upstream_total_timeout",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Queue => "no upstream slot came free in time",
            Self::Connect => "the upstream could not be reached in time",
            Self::FirstToken => "the upstream did not start answering in time",
            Self::Idle => "the upstream went silent mid-answer",
            Self::Total => "the upstream answer took too long",
        }
    }
}

/// Why a model stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The upstream failed before producing anything (connect error, 5xx, an error event before
    /// the first token); the turn may be retried or fall back.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// 429: the upstream asked us to slow down, possibly saying for how long.
    #[error("upstream rate limited: {message}")]
    RateLimited { message: String, retry_after: Option<Duration> },
    /// The upstream refused the request itself (400, 401, 403, 404, 422): retrying the same
    /// request cannot help, another upstream might.
    #[error("upstream refused the request: {0}")]
    Rejected(String),
    /// A hop took longer than its setting allows.
    #[error("{}", .0.describe())]
    Timeout(TimeoutKind),
    /// The conversation's pinned part (system prompt, the user's message, this turn's tool
    /// rounds) does not fit the upstream's token budget.
    #[error("the conversation does not fit the model's context ({needed} tokens needed, {budget} allowed)")]
    ContextOverflow { needed: u64, budget: u64 },
    /// The upstream failed mid-answer.
    #[error("upstream failed: {0}")]
    Failed(String),
}

impl ModelError {
    /// True when trying again may succeed (the upstream never started answering).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::RateLimited { .. } => true,
            Self::Timeout(k) => matches!(k, TimeoutKind::Queue | TimeoutKind::Connect | TimeoutKind::FirstToken),
            Self::Rejected(_) | Self::ContextOverflow { .. } | Self::Failed(_) => false,
        }
    }

    /// True when another upstream of a fallback chain should be tried: any failure before the
    /// first token, including a refusal (a bad key on one provider says nothing of the next).
    pub fn falls_back(&self) -> bool {
        self.retryable() || matches!(self, Self::Rejected(_) | Self::ContextOverflow { .. })
    }

    /// How long the upstream asked us to wait (429 `retry-after`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The client-visible `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "upstream_unavailable",
            Self::RateLimited { .. } => "upstream_rate_limited",
            Self::Rejected(_) => "upstream_rejected",
            Self::Timeout(k) => k.code(),
            Self::ContextOverflow { .. } => "context_overflow",
            Self::Failed(_) => "upstream_failed",
        }
    }
}

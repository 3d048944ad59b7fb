//! The gateway's error type: one variant per refusal, each mapped in one place to an HTTP status
//! and a protocol `error{code}`; and the WebSocket close codes ([`close`]), so every transport
//! ends a connection the same way. Internal causes are logged once, here, and never sent to
//! clients.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::AuthError;
use crate::protocol::{ControlMsg, ErrorCode};
use crate::quota::QuotaError;
use crate::store::StoreError;

/// Close codes (docs/protocol.md).
pub mod close {
    /// The server is restarting or draining: reconnect (resume) at once.
    pub const GOING_AWAY: u16 = 1012;
    /// A frame broke the protocol (e.g. no `hello` first, a bad first frame).
    pub const PROTOCOL: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The token does not allow this session (after `error{forbidden}`).
    pub const POLICY: u16 = 1008;
    /// A frame or message exceeded its size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// No hello, or no traffic and no pong, in time.
    pub const TIMEOUT: u16 = 4000;
    /// The session could not be opened (storage unavailable); reconnect with backoff.
    pub const UNAVAILABLE: u16 = 4003;
    /// The client read too slowly and its send queue overflowed: reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The token expired (after `error{unauthorized}`): reconnect with a fresh token and resume.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Too many frames were refused in a row (`gateway.limits.max_rejected_frames`).
    pub const ABUSE: u16 = 4029;
    /// Too many session opens from this address or user (after `error{rate_limited,
    /// retry_after_ms}`): reconnect after the hint.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A refused request or frame.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: the frame or request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: no token, or a forged, malformed or expired one. The message names the
    /// reason, never the token.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// 403 `forbidden`: the token does not allow this session.
    #[error("{0}")]
    Forbidden(String),
    /// 413 `too_large`: over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// 404 `not_found`: no such turn in this session.
    #[error("{0}")]
    NotFound(String),
    /// 409 `busy`: a turn of the session is running; send again after it ends.
    #[error("turn {active_turn} is still running")]
    Busy { active_turn: String },
    /// 429 `rate_limited`: too many frames or requests; retry after the hint.
    #[error("too many messages; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// 429 `rate_limited`: too many session opens (connects, SSE streams, long-polls) from this
    /// address or user; retry after the hint. On WebSocket: this error, then close 1013.
    #[error("too many session opens; retry after {retry_after_ms} ms")]
    OpensLimited { retry_after_ms: u64 },
    /// 403 `forbidden`: the request's `Origin` (or, in dev mode, `Host`) is not allowed.
    #[error("{0}")]
    OriginRefused(&'static str),
    /// 429 `too_many_connections`: this user's connections on this gateway are all open.
    #[error("you have {limit} connections open on this gateway, the most allowed")]
    TooManyConnections { limit: usize },
    /// 429 `quota_exceeded`: the tenant's turns in flight or per minute are used up.
    #[error("{message}")]
    QuotaExceeded { message: String, retry_after_ms: u64 },
    /// 503 `degraded`: the queue is too long or too old; retry after the measured hint.
    #[error("the service is overloaded; retry after {retry_after_ms} ms")]
    Degraded { retry_after_ms: u64 },
    /// 503 `unavailable`: new connections arrive faster than this gateway admits them
    /// (`gateway.connects_per_sec`, a reconnect storm); retry after the hint, which spreads the
    /// retries out.
    #[error("too many clients are connecting at once; retry after {retry_after_ms} ms")]
    ConnectStorm { retry_after_ms: u64 },
    /// 503 `unavailable`: this gateway is at its connection limit or draining.
    #[error("{0}")]
    Overloaded(&'static str),
    /// 503 `unavailable`: Redis failed; the client may retry. The cause is logged, not sent.
    #[error("storage unavailable")]
    Store(#[from] StoreError),
    /// 503 `unavailable`: the archive (PostgreSQL) failed; the client may retry. The cause is
    /// logged, not sent.
    #[error("archive unavailable")]
    Archive(#[from] crate::archive::ArchiveError),
}

/// Retry hint for `busy`: about one coalescing window of a typical answer.
const BUSY_RETRY_MS: u64 = 1000;

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Store(s) => Self::Store(s),
            QuotaError::PerMinute { retry_after_ms } => Self::QuotaExceeded { message: e.to_string(), retry_after_ms },
            // Slots free as turns end; about one answer's time.
            QuotaError::InFlight { .. } => {
                Self::QuotaExceeded { message: e.to_string(), retry_after_ms: BUSY_RETRY_MS }
            }
        }
    }
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::RateLimited { .. } | Self::OpensLimited { .. } => ErrorCode::RateLimited,
            Self::OriginRefused(_) => ErrorCode::Forbidden,
            Self::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            Self::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Self::Degraded { .. } => ErrorCode::Degraded,
            Self::ConnectStorm { .. } | Self::Overloaded(_) | Self::Store(_) | Self::Archive(_) => {
                ErrorCode::Unavailable
            }
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::OriginRefused(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Busy { .. } => StatusCode::CONFLICT,
            Self::RateLimited { .. }
            | Self::OpensLimited { .. }
            | Self::TooManyConnections { .. }
            | Self::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Degraded { .. }
            | Self::ConnectStorm { .. }
            | Self::Overloaded(_)
            | Self::Store(_)
            | Self::Archive(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Busy { .. } | Self::Store(_) | Self::Archive(_) | Self::Overloaded(_) => Some(BUSY_RETRY_MS),
            Self::RateLimited { retry_after_ms }
            | Self::OpensLimited { retry_after_ms }
            | Self::QuotaExceeded { retry_after_ms, .. }
            | Self::Degraded { retry_after_ms }
            | Self::ConnectStorm { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The protocol frame for this error; logs an internal cause once.
    pub fn to_control(&self) -> ControlMsg {
        if let Self::Store(e) = self {
            tracing::error!(error = %e, "request failed on storage");
        }
        if let Self::Archive(e) = self {
            tracing::error!(error = %e, "request failed on the archive");
        }
        ControlMsg::Error { code: self.code(), message: self.to_string(), retry_after_ms: self.retry_after_ms() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.to_control())).into_response();
        let headers = response.headers_mut();
        if let Some(ms) = self.retry_after_ms() {
            // Whole seconds, rounded up, as RFC 9110 defines Retry-After.
            headers.insert(header::RETRY_AFTER, ms.div_ceil(1000).into());
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

//! The gateway's error type: one variant per refusal, each mapped in one place to an HTTP status
//! and a protocol `error{code}`. Internal causes are logged once, here, and never sent to clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::protocol::{ControlMsg, ErrorCode};
use crate::store::StoreError;

/// A refused request or frame.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: the frame or request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 413 `too_large`: over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// 404 `not_found`: no such turn in this session.
    #[error("{0}")]
    NotFound(String),
    /// 409 `busy`: a turn of the session is running; send again after it ends.
    #[error("turn {active_turn} is still running")]
    Busy { active_turn: String },
    /// 503 `unavailable`: this gateway is at its connection limit or draining.
    #[error("{0}")]
    Overloaded(&'static str),
    /// 503 `unavailable`: Redis failed; the client may retry. The cause is logged, not sent.
    #[error("storage unavailable")]
    Store(#[from] StoreError),
}

/// Retry hint for `busy`: about one coalescing window of a typical answer.
const BUSY_RETRY_MS: u64 = 1000;

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::Overloaded(_) | Self::Store(_) => ErrorCode::Unavailable,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Busy { .. } => StatusCode::CONFLICT,
            Self::Overloaded(_) | Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The protocol frame for this error; logs an internal cause once.
    pub fn to_control(&self) -> ControlMsg {
        if let Self::Store(e) = self {
            tracing::error!(error = %e, "request failed on storage");
        }
        let retry_after_ms = match self {
            Self::Busy { .. } => Some(BUSY_RETRY_MS),
            Self::Store(_) | Self::Overloaded(_) => Some(BUSY_RETRY_MS),
            _ => None,
        };
        ControlMsg::Error { code: self.code(), message: self.to_string(), retry_after_ms }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, Json(self.to_control())).into_response()
    }
}

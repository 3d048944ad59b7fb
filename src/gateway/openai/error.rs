//! OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`) with the status the
//! SDKs map to their exception classes (400 `BadRequestError`, 401 `AuthenticationError`, 429
//! `RateLimitError`, …). Headers of chatfleet's own error response (`Retry-After`,
//! `WWW-Authenticate`) are kept.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::gateway::error::ApiError;
use crate::protocol::ErrorCode;

/// A refused request, as OpenAI's SDKs expect it.
pub fn refused(e: ApiError) -> Response {
    let kind = match e.code() {
        ErrorCode::BadRequest | ErrorCode::TooLarge | ErrorCode::NotFound | ErrorCode::Busy => "invalid_request_error",
        ErrorCode::Unauthorized => "authentication_error",
        ErrorCode::Forbidden => "permission_error",
        ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::TooManyConnections => "rate_limit_error",
        ErrorCode::Degraded | ErrorCode::Unavailable => "server_error",
    };
    let code = serde_json::to_value(e.code()).unwrap_or_default();
    let message = e.to_string();
    let mut r = e.into_response();
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    r.headers_mut().remove(header::CONTENT_LENGTH);
    *r.body_mut() = Body::from(body.to_string());
    r
}

/// The status and error object of a turn that failed before any of its answer was sent: 504 for
/// timeouts, 400 for a conversation over the model's context, 502 for the other upstream
/// failures.
pub fn turn_failed(code: &str, message: &str) -> Response {
    let (status, kind, code) = if code.ends_with("timeout") {
        (StatusCode::GATEWAY_TIMEOUT, "server_error", code)
    } else if code == "context_overflow" {
        (StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded")
    } else {
        (StatusCode::BAD_GATEWAY, "server_error", code)
    };
    (status, axum::Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})))
        .into_response()
}

/// The error chunk of a stream that fails after it started (OpenAI's SDKs raise it as an
/// `APIError`).
pub fn chunk(code: &str, message: &str) -> String {
    json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}}).to_string()
}

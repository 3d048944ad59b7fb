//! Finding a request's credentials (header, query, subprotocol) and checking them, for every
//! transport. A refusal is counted by reason; the token itself is never logged.

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::App;
use crate::auth::{self, AuthError, Identity};
use crate::metrics as m;

/// Where a request may carry its token.
pub(super) enum Source<'a> {
    /// `Authorization: Bearer` only (send, cancel: `fetch` can set headers, and a token in a URL
    /// ends up in proxy logs).
    Header,
    /// The header, or `?token=` for clients that cannot set headers (EventSource, WebSocket).
    HeaderOrQuery(Option<&'a str>),
}

/// The identity of an HTTP request.
pub(super) async fn identify(app: &App, headers: &HeaderMap, source: Source<'_>) -> Result<Identity, ApiError> {
    let from_header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    let token = match source {
        Source::Header => from_header,
        Source::HeaderOrQuery(q) => from_header.or(q),
    };
    check(app, token).await
}

/// Checks a token (or its absence) and counts a refusal.
pub(super) async fn check(app: &App, token: Option<&str>) -> Result<Identity, ApiError> {
    app.auth.authenticate(token).await.map_err(|e| {
        let reason = match e {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::Invalid(_) => "invalid",
        };
        metrics::counter!(m::GATEWAY_AUTH_FAILURES, "reason" => reason).increment(1);
        ApiError::Unauthorized(e)
    })
}

/// The session's keys for `who`, if the id is valid and the token allows it. The tenant comes
/// from the identity only, so a session id can never reach another tenant's keys.
pub(super) fn session_keys(app: &App, who: &Identity, session_id: &str) -> Result<crate::keys::SessionKeys, ApiError> {
    if !crate::keys::is_valid_component(session_id) {
        return Err(ApiError::BadRequest("session id must be 1-64 characters of [A-Za-z0-9_.-]".into()));
    }
    if !who.may_open(session_id) {
        return Err(ApiError::Forbidden("your token does not allow this session".into()));
    }
    Ok(app.store.keys().session(&who.tenant, session_id))
}

//! HTTP routes for clients without a socket: send and cancel (SSE and long-poll clients use these).
//! Both need `Authorization: Bearer` in jwt mode and count against the user's HTTP rate.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::authn::{identify, session_keys, Source};
use super::error::ApiError;
use super::{commands, App};
use crate::auth::{AuthMode, Identity};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    client_msg_id: String,
    text: String,
    /// The model asked for, as in the WebSocket `send`: matched by `[routing]` rules.
    #[serde(default)]
    model: Option<String>,
    /// Media references, as in the WebSocket `send`.
    #[serde(default)]
    attachments: Vec<crate::payload::Attachment>,
}

/// Authenticates and counts one request against the user's HTTP rate (jwt mode: in dev mode all
/// clients are one user, and one client's burst would throttle everyone).
pub(super) async fn caller(app: &App, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let who = identify(app, headers, Source::Header).await?;
    if app.auth.mode() == AuthMode::Jwt {
        app.limits
            .http_request(&who.tenant, &who.user)
            .map_err(|retry_after_ms| ApiError::RateLimited { retry_after_ms })?;
    }
    Ok(who)
}

/// `POST /v1/sessions/{id}/messages` → the `ack` frame.
pub(super) async fn send(
    State(app): State<App>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let who = caller(&app, &headers).await?;
        let keys = session_keys(&app, &who, &session_id)?;
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge(format!("the body exceeds {} bytes", app.settings.gateway.max_frame_bytes))
            }
            _ => ApiError::BadRequest("the body could not be read".into()),
        })?;
        // Parsed here, not by axum's Json extractor, so a bad body gets our error format.
        let body: SendBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        commands::send_with(&app, &who, &keys, &body.client_msg_id, &body.text, body.model, body.attachments).await
    };
    match run.await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/sessions/{id}/turns/{turn_id}/cancel` → 202; the `cancelled` event follows on the feed.
pub(super) async fn cancel(
    State(app): State<App>,
    Path((session_id, turn_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let who = caller(&app, &headers).await?;
        let keys = session_keys(&app, &who, &session_id)?;
        commands::cancel(&app, &keys, &turn_id).await
    };
    match run.await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}

//! HTTP routes for clients without a socket: send and cancel (SSE and long-poll clients use these).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::{commands, App};
use crate::keys::{is_valid_component, SessionKeys};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    client_msg_id: String,
    text: String,
}

/// The session named in a path, if its id is valid.
pub(super) fn session_keys(app: &App, session_id: &str) -> Result<SessionKeys, ApiError> {
    if !is_valid_component(session_id) {
        return Err(ApiError::BadRequest("session id must be 1-64 characters of [A-Za-z0-9_.-]".into()));
    }
    Ok(app.store.keys().session(&app.tenant, session_id))
}

/// `POST /v1/sessions/{id}/messages` → the `ack` frame.
pub(super) async fn send(State(app): State<App>, Path(session_id): Path<String>, body: Bytes) -> Response {
    let run = async {
        let keys = session_keys(&app, &session_id)?;
        // Parsed here, not by axum's Json extractor, so a bad body gets our error format.
        let body: SendBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        commands::send(&app, &keys, &body.client_msg_id, &body.text).await
    };
    match run.await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/sessions/{id}/turns/{turn_id}/cancel` → 202; the `cancelled` event follows on the feed.
pub(super) async fn cancel(State(app): State<App>, Path((session_id, turn_id)): Path<(String, String)>) -> Response {
    let run = async {
        let keys = session_keys(&app, &session_id)?;
        commands::cancel(&app, &keys, &turn_id).await
    };
    match run.await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}

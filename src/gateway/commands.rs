//! What a client asks, independent of transport: `send`, `cancel`, `ping`.

use super::error::ApiError;
use super::App;
use crate::keys::{is_valid_component, SessionKeys};
use crate::metrics as m;
use crate::protocol::{ClientMsg, ControlMsg};
use crate::store::{CancelOutcome, EnqueueOutcome};

/// Handles a frame after `hello`; returns the control frame to answer with, if any.
pub async fn handle(app: &App, keys: &SessionKeys, msg: ClientMsg) -> Option<ControlMsg> {
    let reply = match msg {
        ClientMsg::Send { client_msg_id, text } => send(app, keys, &client_msg_id, &text).await.map(Some),
        ClientMsg::Cancel { turn_id } => cancel(app, keys, &turn_id).await.map(|_| None),
        ClientMsg::Ping => Ok(Some(ControlMsg::Pong)),
        ClientMsg::Hello { .. } => Err(ApiError::BadRequest("hello was already received".into())),
    };
    match reply {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!(m::GATEWAY_REJECTED, "code" => super::ws::code_label(e.code())).increment(1);
            Some(e.to_control())
        }
    }
}

/// Stores a user message as a new turn (or finds the turn of an earlier identical send) and
/// returns the `ack`. The message is in Redis before this returns (invariant I2).
pub async fn send(app: &App, keys: &SessionKeys, client_msg_id: &str, text: &str) -> Result<ControlMsg, ApiError> {
    let started = std::time::Instant::now();
    if !is_valid_component(client_msg_id) {
        return Err(ApiError::BadRequest("client_msg_id must be 1-64 characters of [A-Za-z0-9_.-]".into()));
    }
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest("text is empty".into()));
    }
    let max = app.settings.session.max_message_bytes;
    if text.len() > max {
        return Err(ApiError::TooLarge(format!("text is {} bytes; the limit is {max}", text.len())));
    }
    let turn_id = uuid::Uuid::now_v7().simple().to_string();
    let epoch = uuid::Uuid::new_v4().simple().to_string();
    let outcome = app.store.enqueue_turn(keys, &turn_id, client_msg_id, text, &epoch, &[]).await?;
    metrics::histogram!(m::GATEWAY_ACK_SECONDS).record(started.elapsed().as_secs_f64());
    match outcome {
        EnqueueOutcome::New { turn_id, seq, .. } | EnqueueOutcome::Duplicate { turn_id, seq, .. } => {
            Ok(ControlMsg::Ack { client_msg_id: client_msg_id.to_string(), turn_id, seq })
        }
        EnqueueOutcome::Busy { active_turn } => Err(ApiError::Busy { active_turn }),
    }
}

/// Asks for a turn to stop. Its `cancelled` event follows on the session feed.
pub async fn cancel(app: &App, keys: &SessionKeys, turn_id: &str) -> Result<(), ApiError> {
    if !is_valid_component(turn_id) {
        return Err(ApiError::BadRequest("turn_id must be 1-64 characters of [A-Za-z0-9_.-]".into()));
    }
    match app.store.cancel_turn(keys, turn_id).await? {
        CancelOutcome::Unknown => Err(ApiError::NotFound(format!("no turn {turn_id} in this session"))),
        CancelOutcome::Cancelled { .. } | CancelOutcome::Cancelling { .. } | CancelOutcome::Ended { .. } => Ok(()),
    }
}

//! What a client asks, independent of transport: `send`, `cancel`, `ping`.

use super::error::ApiError;
use super::App;
use crate::auth::Identity;
use crate::keys::{is_valid_component, SessionKeys};
use crate::metrics as m;
use crate::protocol::{ClientMsg, ControlMsg};
use crate::store::{CancelOutcome, EnqueueOutcome, NewMessage};

/// Handles a frame after `hello`; returns the control frame to answer with, if any, and whether
/// the frame was refused.
pub async fn handle(app: &App, who: &Identity, keys: &SessionKeys, msg: ClientMsg) -> (Option<ControlMsg>, bool) {
    let reply = match msg {
        ClientMsg::Send { client_msg_id, text, model, attachments } => {
            send_with(app, who, keys, &client_msg_id, &text, model, attachments).await.map(Some)
        }
        ClientMsg::Cancel { turn_id } => cancel(app, keys, &turn_id).await.map(|_| None),
        ClientMsg::Ping => Ok(Some(ControlMsg::Pong)),
        ClientMsg::Hello { .. } => Err(ApiError::BadRequest("hello was already received".into())),
    };
    match reply {
        Ok(r) => (r, false),
        Err(e) => {
            metrics::counter!(m::GATEWAY_REJECTED, "code" => super::ws::code_label(e.code())).increment(1);
            (Some(e.to_control()), true)
        }
    }
}

/// Stores a user message as a new turn (or finds the turn of an earlier identical send) and
/// returns the `ack`. The message is in Redis before this returns (invariant I2).
///
/// Before anything is stored: admission control (the partition's queue) and the tenant's quota.
/// A send that stores no new turn (a duplicate, or `busy`) hands its quota slot back.
/// `model` is the model the client asked for (WebSocket and REST `send`), carried to the worker
/// in the turn's options, as are the message's `attachments`.
pub async fn send_with(
    app: &App,
    who: &Identity,
    keys: &SessionKeys,
    client_msg_id: &str,
    text: &str,
    model: Option<String>,
    attachments: Vec<crate::payload::Attachment>,
) -> Result<ControlMsg, ApiError> {
    let opts = crate::payload::TurnOpts { model, attachments, ..Default::default() };
    let sent = send_opts(app, who, keys, client_msg_id, text, &opts, "").await?;
    Ok(ControlMsg::Ack { client_msg_id: client_msg_id.to_string(), turn_id: sent.turn_id, seq: sent.seq })
}

/// A stored turn: its id, the seq of its `user_message` event, and the session's epoch (what a
/// client needs to follow the turn, or to resume it on the session's feed).
#[derive(Debug, Clone)]
pub struct Sent {
    pub turn_id: String,
    pub seq: u64,
    pub epoch: String,
    /// A new turn; false for a repeat of an earlier send, whose events may already be past.
    pub fresh: bool,
}

/// [`send`] with all of a turn's options (the OpenAI-compatible ingress passes sampling options
/// and its request's context this way). `follower`: the id of a lasting connection that follows
/// the turn from here and is counted as watching the session (see `NewMessage::follower`), or
/// `""`.
pub async fn send_opts(
    app: &App,
    who: &Identity,
    keys: &SessionKeys,
    client_msg_id: &str,
    text: &str,
    opts: &crate::payload::TurnOpts,
    follower: &str,
) -> Result<Sent, ApiError> {
    if opts.model.as_ref().is_some_and(|m| m.is_empty() || m.len() > 128) {
        return Err(ApiError::BadRequest("model must be 1-128 characters".into()));
    }
    // Checked before anything is stored; what is stored is the normalised reference.
    let n = opts.attachments.len() as u64;
    let checked = app.settings.media.check(&opts.attachments).map_err(|e| {
        metrics::counter!(m::GATEWAY_ATTACHMENTS, "outcome" => "refused").increment(n);
        match e {
            crate::media::MediaError::TooLarge(m) => ApiError::TooLarge(m),
            crate::media::MediaError::Refused(m) => ApiError::BadRequest(m),
        }
    })?;
    metrics::counter!(m::GATEWAY_ATTACHMENTS, "outcome" => "accepted").increment(n);
    let with_media;
    let opts = match checked == opts.attachments {
        true => opts,
        false => {
            with_media = crate::payload::TurnOpts { attachments: checked, ..opts.clone() };
            &with_media
        }
    };
    let attachments = opts.attachments.clone();
    // The archive files the turn under its sender, so the owner rides along when it is on.
    let owned;
    let opts = match app.settings.archive.enabled() {
        true => {
            owned = crate::payload::TurnOpts { owner: Some(who.user.clone()), ..opts.clone() };
            &owned
        }
        false => opts,
    };
    let msg = NewMessage { client_msg_id, text, attachments: &attachments, follower };
    let opts = match opts == &crate::payload::TurnOpts::default() {
        true => Vec::new(),
        false => crate::payload::encode_turn_opts(opts),
    };
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
    if app.settings.gateway.log_message_text {
        tracing::debug!(tenant = %who.tenant, user = %who.user, client_msg_id, text, "send");
    } else {
        tracing::debug!(tenant = %who.tenant, user = %who.user, client_msg_id, bytes = text.len(), "send");
    }
    let turn_id = uuid::Uuid::now_v7().simple().to_string();
    let epoch = uuid::Uuid::new_v4().simple().to_string();
    let slot = match admit(app, who, keys, &turn_id).await {
        Ok(slot) => slot,
        // A retry of a send that was stored gets its ack, whatever the load: its turn already
        // holds its place. Checked only on refusal, so the common path costs nothing more.
        Err(e) => match app.store.known_send(&keys.base, client_msg_id).await? {
            Some(_) => None,
            None => return Err(e),
        },
    };
    // If this fails, whether the turn was stored is unknown: the slot is kept, and freed when
    // the tenant next reaches its limit and the turn is found ended or missing.
    let actor = who.actor(keys.session_id(), app.settings.session.bind_to_user);
    let turn = Enqueue { keys, turn_id: &turn_id, msg: &msg, epoch: &epoch, opts: &opts, actor };
    let archived = app.archive.is_some();
    let outcome = match turn.run(app, who, archived).await? {
        // A session Redis lost comes back from the archive before the message lands on it, so
        // the turn's context is the whole conversation (the same restore as on open).
        EnqueueOutcome::Missing if archived => {
            super::conversations::restore(app, who, keys, actor).await?;
            turn.run(app, who, false).await?
        }
        other => other,
    };
    metrics::histogram!(m::GATEWAY_ACK_SECONDS).record(started.elapsed().as_secs_f64());
    if let (Some(slot), false) = (slot, matches!(outcome, EnqueueOutcome::New { .. })) {
        if let Err(e) = app.quotas.release(&app.store, slot, true).await {
            // Not fatal: the slot is freed later by reconciliation or `quota.stale_ms`.
            tracing::warn!(error = %e, "cannot release a quota slot");
        }
    }
    match outcome {
        EnqueueOutcome::New { turn_id, seq, epoch } => Ok(Sent { turn_id, seq, epoch, fresh: true }),
        EnqueueOutcome::Duplicate { turn_id, seq, epoch } => Ok(Sent { turn_id, seq, epoch, fresh: false }),
        EnqueueOutcome::Busy { active_turn } => Err(ApiError::Busy { active_turn }),
        EnqueueOutcome::Forbidden => Err(ApiError::Forbidden("this session belongs to another user".into())),
        EnqueueOutcome::Missing | EnqueueOutcome::Quota(_) => Err(ApiError::Store(crate::store::StoreError::Reply {
            function: "enq",
            detail: "an enqueue answered missing or quota where it cannot".into(),
        })),
    }
}

/// One turn to enqueue, with its quota slot taken in the same call where the store can
/// ([`crate::store::Store::quota_with_enqueue`]; else [`admit`] took it before).
struct Enqueue<'a> {
    keys: &'a SessionKeys,
    turn_id: &'a str,
    msg: &'a NewMessage<'a>,
    epoch: &'a str,
    opts: &'a [u8],
    actor: crate::store::Actor<'a>,
}

impl Enqueue<'_> {
    /// `present`: refuse a session Redis does not have (`Missing`), for an archive restore.
    async fn run(&self, app: &App, who: &Identity, present: bool) -> Result<EnqueueOutcome, ApiError> {
        let (store, k) = (&app.store, self.keys);
        let (t, m, e, o, a) = (self.turn_id, self.msg, self.epoch, self.opts, self.actor);
        if !store.quota_with_enqueue() {
            return Ok(match present {
                true => store.enqueue_turn_if_present(k, t, m, e, o, a).await?,
                false => store.enqueue_turn(k, t, m, e, o, a).await?,
            });
        }
        let member = crate::quota::Quotas::ask_member(k, t);
        let ask = app.quotas.ask(&who.tenant, &member);
        for first in [true, false] {
            match store.enqueue_turn_with_quota(k, t, m, e, o, a, present, &ask).await? {
                EnqueueOutcome::Quota(q) => {
                    if !app.quotas.after_refusal(store, &who.tenant, q, first).await? {
                        break;
                    }
                }
                other => return Ok(other),
            }
        }
        Err(crate::quota::QuotaError::InFlight { limit: ask.max_inflight }.into())
    }
}

/// Admission control (the partition's queue), then the tenant's quota slot for `turn_id`, unless
/// the enqueue takes it in its own call (`None`: see [`Enqueue`]).
async fn admit(
    app: &App,
    who: &Identity,
    keys: &SessionKeys,
    turn_id: &str,
) -> Result<Option<crate::quota::Slot>, ApiError> {
    if let Some(retry_after_ms) = app.admission.check(keys.partition) {
        metrics::counter!(m::GATEWAY_DEGRADED).increment(1);
        return Err(ApiError::Degraded { retry_after_ms });
    }
    if app.store.quota_with_enqueue() {
        return Ok(None);
    }
    Ok(Some(app.quotas.acquire(&app.store, &who.tenant, keys, turn_id).await?))
}

/// Asks for a turn to stop. Its `cancelled` event follows on the session feed. The turn is looked
/// up in this session only (whose keys carry the caller's tenant), so another tenant's turn id
/// is simply unknown here: `not_found`, and the other turn is untouched.
pub async fn cancel(app: &App, keys: &SessionKeys, turn_id: &str) -> Result<(), ApiError> {
    if !is_valid_component(turn_id) {
        return Err(ApiError::BadRequest("turn_id must be 1-64 characters of [A-Za-z0-9_.-]".into()));
    }
    match app.store.cancel_turn(keys, turn_id).await? {
        CancelOutcome::Unknown => Err(ApiError::NotFound(format!("no turn {turn_id} in this session"))),
        CancelOutcome::Cancelled { .. } | CancelOutcome::Cancelling { .. } | CancelOutcome::Ended { .. } => Ok(()),
    }
}

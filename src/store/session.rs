//! What gateways (and the operator tool) do to a session: enqueue a turn, open the session for a
//! connection and detach it, cancel a turn, read the log, store a summary.
//!
//! Each is an op of `cf3_batch` (group-committed) except the log read, a read-only function.
//! Resending any of them is harmless: `enq` dedupes by client_msg_id, `open`/`detach` count
//! connections by id, `cancel` sets a flag, `summary` keeps the one that covers more.

use fred::prelude::*;
use tracing::Instrument;

use super::conn::function;
use super::ops::OpBuilder;
use super::reply::Reply;
use super::{Store, StoreError};
use crate::keys::{self, SessionKeys};
use crate::payload::{self, HistoryMessage, StoredEvent};

/// A user's message as `enqueue_turn` stores it.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// The client's id for the send; a retry with the same id finds the first turn.
    pub client_msg_id: &'a str,
    pub text: &'a str,
    /// Media references, already checked against `[media]` (see `crate::media`).
    pub attachments: &'a [payload::Attachment],
    /// A lasting connection that follows the turn from its `user_message` on, counted as
    /// watching the session (as `open_session` counts one) until [`Store::detach`] with the same
    /// id; `""` for none. Lets an ingress request follow its turn without an open of its own.
    pub follower: &'a str,
}

impl<'a> NewMessage<'a> {
    /// A message of text only.
    pub fn text(client_msg_id: &'a str, text: &'a str) -> Self {
        Self { client_msg_id, text, attachments: &[], follower: "" }
    }
}

/// Result of `enqueue_turn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Stored and queued; `seq` is the `user_message` event.
    New { turn_id: String, seq: u64, epoch: String },
    /// A retry of an earlier send: its original turn and seq.
    Duplicate { turn_id: String, seq: u64, epoch: String },
    /// Another turn is active; nothing stored.
    Busy { active_turn: String },
    /// The session belongs to another user; nothing stored.
    Forbidden,
    /// Only from [`Store::enqueue_turn_if_present`]: Redis does not have the session (it
    /// expired or was lost); nothing stored.
    Missing,
    /// Only from [`Store::enqueue_turn_with_quota`]: the tenant's quota refused the turn
    /// (`PerMinute` or `InFlight`); nothing stored.
    Quota(super::quota::QuotaOutcome),
}

/// Result of `cancel_turn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled {
        seq: u64,
    },
    /// It is running; its worker was told.
    Cancelling {
        worker: String,
    },
    /// It had already ended.
    Ended {
        status: String,
    },
    Unknown,
}

/// Result of `open_session`.
#[derive(Debug, Clone)]
pub enum Opened {
    Replay {
        epoch: String,
        seq: u64,
        events: Vec<(u64, StoredEvent)>,
    },
    Snapshot {
        epoch: String,
        seq: u64,
        history: Vec<HistoryMessage>,
        active_turn: Option<String>,
        partial: String,
        reason: String,
    },
    /// The session is bound to another user.
    Forbidden,
}

/// Result of `read_log`.
#[derive(Debug, Clone)]
pub enum LogRead {
    /// Events after the requested seq, and the session's top seq; with an anchored read, the
    /// event the log holds at the requested seq itself.
    Events { events: Vec<(u64, StoredEvent)>, top: u64, anchor: Option<StoredEvent> },
    /// The session's epoch changed: the connection must take a snapshot.
    EpochChanged,
    /// The requested seq is no longer in the log.
    Trimmed,
    /// The session's top seq is below the requested one: Redis lost writes the connection saw
    /// (a failover to a lagging replica, a restart from an older snapshot). Snapshot.
    Behind { top: u64 },
}

/// Who acts on a session, for the owner check (see `lua/chatfleet.lua`, `refused`): a user id,
/// `""` to create shared sessions, or `"*"` to pass the check (an operator, or a token allowed
/// the session explicitly).
pub type Actor<'a> = &'a str;

impl Store {
    /// Stores the user's message and queues its turn (idempotent by `client_msg_id`).
    pub async fn enqueue_turn(
        &self,
        s: &SessionKeys,
        turn_id: &str,
        msg: &NewMessage<'_>,
        epoch_candidate: &str,
        opts: &[u8],
        user: Actor<'_>,
    ) -> Result<EnqueueOutcome, StoreError> {
        self.enqueue(s, turn_id, msg, epoch_candidate, opts, user, false, None).await
    }

    /// [`Store::enqueue_turn`], but a session Redis does not have is not created: the answer is
    /// [`EnqueueOutcome::Missing`], so that the caller can restore it from the archive first.
    pub async fn enqueue_turn_if_present(
        &self,
        s: &SessionKeys,
        turn_id: &str,
        msg: &NewMessage<'_>,
        epoch_candidate: &str,
        opts: &[u8],
        user: Actor<'_>,
    ) -> Result<EnqueueOutcome, StoreError> {
        self.enqueue(s, turn_id, msg, epoch_candidate, opts, user, true, None).await
    }

    /// [`Store::enqueue_turn`] (or, with `present`, [`Store::enqueue_turn_if_present`]) that
    /// also takes the tenant's quota slot in the same call, so a send is one round trip: only
    /// where [`Store::quota_with_enqueue`]. A refusal is [`EnqueueOutcome::Quota`]; a retried
    /// send (`Duplicate`) and a busy session take no slot.
    #[allow(clippy::too_many_arguments)]
    pub async fn enqueue_turn_with_quota(
        &self,
        s: &SessionKeys,
        turn_id: &str,
        msg: &NewMessage<'_>,
        epoch_candidate: &str,
        opts: &[u8],
        user: Actor<'_>,
        present: bool,
        quota: &super::quota::QuotaAsk<'_>,
    ) -> Result<EnqueueOutcome, StoreError> {
        self.enqueue(s, turn_id, msg, epoch_candidate, opts, user, present, Some(quota)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &self,
        s: &SessionKeys,
        turn_id: &str,
        msg: &NewMessage<'_>,
        epoch_candidate: &str,
        opts: &[u8],
        user: Actor<'_>,
        present: bool,
        quota: Option<&super::quota::QuotaAsk<'_>>,
    ) -> Result<EnqueueOutcome, StoreError> {
        // The turn's trace starts here, as a child of the caller's span (the gateway connection).
        let span = tracing::info_span!("enqueue_turn", turn_id);
        let traceparent = crate::trace::traceparent_of(&span);
        let mut minute = super::quota::local_minute();
        // As in `quota_acquire`: a second call when Redis's clock names another minute.
        for _ in 0..2 {
            let quota = quota.map(|q| (q, minute));
            let op = self.enq_op(s, turn_id, msg, (epoch_candidate, opts, &traceparent), user, present, quota);
            let mut r = self.op(&s.base, op).instrument(span.clone()).await?;
            let status = r.string()?;
            let turn_id = r.string()?;
            let seq = r.int()? as u64;
            let epoch = r.string()?;
            return match status.as_str() {
                "new" => Ok(EnqueueOutcome::New { turn_id, seq, epoch }),
                "dup" => Ok(EnqueueOutcome::Duplicate { turn_id, seq, epoch }),
                "busy" => Ok(EnqueueOutcome::Busy { active_turn: turn_id }),
                "forbidden" => Ok(EnqueueOutcome::Forbidden),
                "missing" => Ok(EnqueueOutcome::Missing),
                "quota" => match super::quota::quota_step(&mut r.array()?)? {
                    super::quota::QuotaStep::Done(outcome) => Ok(EnqueueOutcome::Quota(outcome)),
                    super::quota::QuotaStep::Minute(m) => {
                        minute = m;
                        continue;
                    }
                },
                other => Err(r.bad(format!("unknown status {other}"))),
            };
        }
        Err(StoreError::Reply { function: "enq", detail: "the clock minute kept changing".into() })
    }

    /// The `enq` op; with a quota, its keys (the tenant's in-flight set and `minute`'s counter)
    /// follow the stream.
    /// `turn`: the epoch candidate, the opts and the traceparent.
    #[allow(clippy::too_many_arguments)]
    fn enq_op(
        &self,
        s: &SessionKeys,
        turn_id: &str,
        msg: &NewMessage<'_>,
        (epoch_candidate, opts, traceparent): (&str, &[u8], &str),
        user: Actor<'_>,
        present: bool,
        quota: Option<(&super::quota::QuotaAsk<'_>, u64)>,
    ) -> super::ops::Op {
        let mut b = OpBuilder::turn("enq", &s.base, turn_id).key(s.stream.clone());
        if let Some((q, minute)) = quota {
            b = b.key(self.keys.quota_inflight(q.tenant)).key(self.keys.quota_minute(q.tenant, minute));
        }
        let b = b
            .str(turn_id)
            .str(msg.client_msg_id)
            .str(msg.text)
            .str(epoch_candidate)
            .bin(opts)
            .str(traceparent)
            // Workers in a Cluster wait for a wake-up; standalone ones block on the streams.
            .uint(u64::from(self.redis.is_clustered()))
            .str(user)
            .uint(u64::from(present));
        // Most sends carry no attachments: an empty field spares the function an unpack.
        let b = match msg.attachments {
            [] => b.str(""),
            att => b.value(&att),
        };
        let b = b.str(msg.follower);
        match quota {
            Some((q, _)) => {
                let (member, max_inflight, max_per_minute, stale_ms, max_listed) = q.args();
                b.str(member).uint(max_inflight).uint(max_per_minute).uint(stale_ms).uint(max_listed).build()
            }
            None => b.build(),
        }
    }

    /// Opens a session for a client. `conn`: the id of a lasting connection (WebSocket, SSE)
    /// that now watches the session until [`Store::detach`] with the same id; `None` for a
    /// one-off read (long-poll).
    pub async fn open_session(
        &self,
        s: &SessionKeys,
        epoch_candidate: &str,
        client_epoch: Option<&str>,
        last_seq: Option<u64>,
        conn: Option<&str>,
        user: Actor<'_>,
    ) -> Result<Opened, StoreError> {
        let op = OpBuilder::session("open", &s.base)
            .str(epoch_candidate)
            .str(client_epoch.unwrap_or(""))
            .int(last_seq.map(|s| s as i64).unwrap_or(-1))
            .uint(self.replay_max)
            .uint(self.hist_max)
            .str(conn.unwrap_or(""))
            .str(user)
            .build();
        let mut r = self.op(&s.base, op).await?;
        let kind = r.string()?;
        if kind == "forbidden" {
            return Ok(Opened::Forbidden);
        }
        let epoch = r.string()?;
        let seq = r.int()? as u64;
        match kind.as_str() {
            "replay" => Ok(Opened::Replay { epoch, seq, events: events(r.array()?)? }),
            "snapshot" => {
                let history = history(r.array()?)?;
                let active = r.string()?;
                let partial = r.string()?;
                let reason = r.string()?;
                Ok(Opened::Snapshot {
                    epoch,
                    seq,
                    history,
                    active_turn: (!active.is_empty()).then_some(active),
                    partial,
                    reason,
                })
            }
            other => Err(r.bad(format!("unknown kind {other}"))),
        }
    }

    /// A lasting connection `conn` of the session closed; returns how many are still attached.
    pub async fn detach(&self, base: &str, conn: &str) -> Result<i64, StoreError> {
        let op = OpBuilder::session("detach", base).str(conn).build();
        self.op(base, op).await?.int()
    }

    pub async fn cancel_turn(&self, s: &SessionKeys, turn_id: &str) -> Result<CancelOutcome, StoreError> {
        let mut b = OpBuilder::turn("cancel", &s.base, turn_id);
        // Cancelling a queued turn ends it, and an ended turn is archived: the archive stream
        // sits at its fixed place after the stream and dead-letter keys.
        if let Some(archive) = self.archive_key(s.partition) {
            b = b.key(s.stream.clone()).key(self.keys.dlq(s.partition)).key(archive);
        }
        let op = b.str(turn_id).str(&self.worker_channel_prefix).build();
        let mut r = self.op(&s.base, op).await?;
        match r.string()?.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled { seq: r.int()? as u64 }),
            "cancelling" => Ok(CancelOutcome::Cancelling { worker: r.string()? }),
            "ended" => Ok(CancelOutcome::Ended { status: r.string()? }),
            "unknown" => Ok(CancelOutcome::Unknown),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    /// Stores a summary of the session's history up to turn `upto`; false when the session moved
    /// to another epoch or a summary covering as much is already there.
    pub async fn put_summary(
        &self,
        base: &str,
        epoch: &str,
        upto: &str,
        text: &str,
        template: &str,
    ) -> Result<bool, StoreError> {
        let op = OpBuilder::session("summary", base).str(epoch).str(upto).str(text).str(template).build();
        Ok(self.op(base, op).await?.int()? == 1)
    }

    /// Events after `after`, at most `count`, if the session is still on `epoch`.
    /// Events after seq `after` of `epoch`, at most `count`. `anchored`: also return the event at
    /// `after` itself, for a caller that holds it to check that Redis still has that one (lost
    /// writes may have been followed by new ones that reused their seqs).
    pub async fn read_log(
        &self,
        base: &str,
        after: u64,
        count: u64,
        epoch: &str,
        anchored: bool,
    ) -> Result<LogRead, StoreError> {
        let v: Value = self
            .redis
            .client()
            .fcall_ro(
                function::READ_LOG,
                vec![keys::meta_key(base), keys::log_key(base)],
                vec![after.to_string(), count.to_string(), epoch.to_string(), u8::from(anchored).to_string()],
            )
            .await?;
        let mut r = Reply::new(function::READ_LOG, v)?;
        let status = r.string()?;
        let top = r.int()?.max(0) as u64;
        match status.as_str() {
            "ok" => {
                let events = events(r.array()?)?;
                let anchor = match r.bytes()? {
                    b if b.is_empty() => None,
                    b => Some(payload::decode_event(&b).map_err(|e| r.bad(e.to_string()))?),
                };
                Ok(LogRead::Events { events, top, anchor })
            }
            "epoch" => Ok(LogRead::EpochChanged),
            "trimmed" => Ok(LogRead::Trimmed),
            "behind" => Ok(LogRead::Behind { top }),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    /// The turn an earlier send with `client_msg_id` created in this session, if any: a plain
    /// read of the session's dedupe hash. Lets a retried send get its ack even while new sends
    /// are refused.
    pub async fn known_send(&self, session_base: &str, client_msg_id: &str) -> Result<Option<String>, StoreError> {
        let v: Option<String> = self.redis.client().hget(keys::dedupe_key(session_base), client_msg_id).await?;
        Ok(v.map(|v| v.split(' ').next().unwrap_or_default().to_string()))
    }

    /// The status of a turn (`queued`, `running`, `done`, …), or `None` when its record is gone.
    pub async fn turn_status(&self, session_base: &str, turn_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.redis.client().hget(keys::turn_key(session_base, turn_id), "status").await?)
    }
}

pub(super) fn events(mut list: Reply) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
    let mut out = Vec::with_capacity(list.len());
    while list.len() > 0 {
        let mut e = list.array()?;
        let seq = e.int()? as u64;
        out.push((seq, payload::decode_event(&e.bytes()?)?));
    }
    Ok(out)
}

pub(super) fn history(mut h: Reply) -> Result<Vec<HistoryMessage>, StoreError> {
    let mut out = Vec::with_capacity(h.len());
    while h.len() > 0 {
        out.push(payload::decode_history(&h.bytes()?)?);
    }
    Ok(out)
}

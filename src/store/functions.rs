//! [`Store`]: one typed method per function of `lua/chatfleet.lua`.
//!
//! Arguments are passed in the order each function's contract (its comment in the Lua file)
//! lists them; replies are decoded into enums, one variant per documented outcome.

use bytes::Bytes;
use fred::prelude::*;
use tracing::Instrument;

use super::reply::Reply;
use super::{Redis, StoreError};
use crate::keys::{Keyspace, SessionKeys, GROUP};
use crate::payload::{self, HistoryMessage, StoredEvent};
use crate::settings::Settings;

/// Result of `enqueue_turn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Stored and queued; `seq` is the `user_message` event.
    New { turn_id: String, seq: u64, epoch: String },
    /// A retry of an earlier send: its original turn and seq.
    Duplicate { turn_id: String, seq: u64, epoch: String },
    /// Another turn is active; nothing stored.
    Busy { active_turn: String },
}

/// Result of `start_turn`.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    Run {
        attempt: u32,
        history: Vec<HistoryMessage>,
        opts: Bytes,
        /// Server time of the enqueue and of this start (µs): the queue wait.
        created_us: u64,
        started_us: u64,
        /// Session flags, summary and earlier attempts' tool records.
        context: TurnContext,
    },
    /// Ended before it started (e.g. cancelled while queued); the entry was acked.
    Skip { status: String },
    /// The turn no longer exists; the entry was acked.
    Gone,
    /// Another attempt is running it.
    Held,
}

/// Result of a fenced write (`emit`, `tool_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written {
        seq: u64,
        cancel: bool,
    },
    /// This attempt no longer owns the turn: stop, write nothing more.
    Fenced,
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

/// A turn taken over by `reclaim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub entry_id: String,
    pub base: String,
    pub turn_id: String,
    /// W3C trace context of the turn ('' when none was recorded).
    pub traceparent: String,
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
}

/// Result of `read_log`.
#[derive(Debug, Clone)]
pub enum LogRead {
    Events(Vec<(u64, StoredEvent)>),
    /// The session's epoch changed: the connection must take a snapshot.
    EpochChanged,
    /// The requested seq is no longer in the log.
    Trimmed,
}

/// How a turn ends, for `finish_turn`.
#[derive(Debug, Clone)]
pub struct FinishArgs<'a> {
    pub turn_id: &'a str,
    pub attempt: u32,
    pub entry_id: &'a str,
    /// `done`, `error` or `cancelled`.
    pub outcome: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub error_code: &'a str,
    pub error_message: &'a str,
    /// Also record the turn in the dead-letter stream.
    pub dead_letter: bool,
    /// Who answered, when no earlier write of the round recorded it.
    pub audit: Option<&'a TurnAudit>,
}

/// Which upstream and model answered a round, and the prompt template version: recorded on the
/// turn by the round's next fenced write (`emit`, `finish_turn`), so the audit never costs a
/// round trip of its own before the first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnAudit {
    pub upstream: String,
    pub model: String,
    pub template: String,
}

impl TurnAudit {
    fn args(audit: Option<&Self>) -> impl Iterator<Item = Value> + '_ {
        audit
            .into_iter()
            .flat_map(|a| [a.upstream.as_str().into(), a.model.as_str().into(), a.template.as_str().into()])
    }
}

/// What a starting attempt reads besides its history: the context part of `start_turn`'s reply.
#[derive(Debug, Clone, Default)]
pub struct TurnContext {
    /// The session's epoch (for `put_summary`).
    pub epoch: String,
    /// Members of the session's flags set (routing).
    pub flags: Vec<String>,
    /// The summary of older history and the turn id it covers up to, if any.
    pub summary: Option<(String, String)>,
    /// Tool call records written by earlier attempts of the turn (msgpack `ToolRecord`s).
    pub tool_records: Vec<Bytes>,
}

/// The typed function API. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    redis: Redis,
    keys: Keyspace,
    ttl: String,
    log_max: String,
    hist_max: String,
    replay_max: String,
    lease_ms: String,
    worker_channel_prefix: String,
    sweep: SweepParams,
}

/// What `reclaim` needs from the worker settings.
#[derive(Clone)]
struct SweepParams {
    /// The sweep lock outlives one interval, so a live holder keeps it, and expires well before a
    /// lease does when the holder dies.
    lock_ms: u64,
    /// Entries idle less than a heartbeat were just delivered: skipped to save reads. Leases
    /// decide; idle time only filters, so a released turn is taken at the next sweep.
    min_idle_ms: u64,
    batch: u64,
    max_attempts: u32,
    consumer_gc_idle_ms: u64,
}

impl Store {
    pub fn new(redis: Redis, settings: &Settings) -> Self {
        let keys = Keyspace::new(settings.redis.key_prefix.clone(), settings.redis.partitions);
        Self {
            worker_channel_prefix: keys.worker_channel_prefix(),
            keys,
            redis,
            ttl: settings.session.ttl_secs.to_string(),
            log_max: settings.session.log_max_events.to_string(),
            hist_max: settings.session.history_max_messages.to_string(),
            replay_max: settings.session.replay_max_events.to_string(),
            lease_ms: settings.worker.lease_ms.to_string(),
            sweep: SweepParams {
                lock_ms: settings.worker.sweep_interval_ms * 2,
                min_idle_ms: settings.worker.heartbeat_ms,
                batch: settings.worker.sweep_batch,
                max_attempts: settings.worker.max_attempts,
                consumer_gc_idle_ms: settings.worker.consumer_gc_idle_ms,
            },
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// Loads the functions and creates the consumer group of every partition.
    pub async fn ensure_schema(&self) -> Result<(), StoreError> {
        self.redis.load_functions().await?;
        let creates = (0..self.keys.partitions()).map(|p| self.redis.ensure_group_owned(self.keys.stream(p)));
        futures::future::try_join_all(creates).await?;
        Ok(())
    }

    async fn call(&self, name: &'static str, keys: Vec<String>, args: Vec<Value>) -> Result<Reply, StoreError> {
        let v: Value = self.redis.client().fcall(name, keys, args).await?;
        Reply::new(name, v)
    }

    pub async fn enqueue_turn(
        &self,
        s: &SessionKeys,
        turn_id: &str,
        client_msg_id: &str,
        text: &str,
        epoch_candidate: &str,
        opts: &[u8],
    ) -> Result<EnqueueOutcome, StoreError> {
        // The turn's trace starts here, as a child of the caller's span (the gateway connection).
        let span = tracing::info_span!("enqueue_turn", turn_id);
        let traceparent = crate::trace::traceparent_of(&span);
        let mut r = self
            .call(
                "cf1_enqueue_turn",
                vec![s.base.clone(), s.stream.clone()],
                vec![
                    turn_id.into(),
                    client_msg_id.into(),
                    text.into(),
                    epoch_candidate.into(),
                    self.ttl.as_str().into(),
                    self.log_max.as_str().into(),
                    self.hist_max.as_str().into(),
                    Value::Bytes(Bytes::copy_from_slice(opts)),
                    traceparent.as_str().into(),
                    // Workers in a Cluster wait for a wake-up; standalone ones block on the streams.
                    if self.redis.is_clustered() { "1" } else { "0" }.into(),
                ],
            )
            .instrument(span)
            .await?;
        let status = r.string()?;
        let turn_id = r.string()?;
        let seq = r.int()? as u64;
        let epoch = r.string()?;
        match status.as_str() {
            "new" => Ok(EnqueueOutcome::New { turn_id, seq, epoch }),
            "dup" => Ok(EnqueueOutcome::Duplicate { turn_id, seq, epoch }),
            "busy" => Ok(EnqueueOutcome::Busy { active_turn: turn_id }),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    pub async fn start_turn(
        &self,
        base: &str,
        stream: &str,
        turn_id: &str,
        entry_id: &str,
        worker: &str,
    ) -> Result<StartOutcome, StoreError> {
        let mut r = self
            .call(
                "cf1_start_turn",
                vec![base.into(), stream.into()],
                vec![
                    turn_id.into(),
                    entry_id.into(),
                    GROUP.into(),
                    worker.into(),
                    self.lease_ms.as_str().into(),
                    self.hist_max.as_str().into(),
                    self.log_max.as_str().into(),
                ],
            )
            .await?;
        match r.string()?.as_str() {
            "run" => {
                let attempt = r.int()? as u32;
                let mut h = r.array()?;
                let mut history = Vec::with_capacity(h.len());
                while h.len() > 0 {
                    history.push(payload::decode_history(&h.bytes()?)?);
                }
                let opts = r.bytes()?;
                let created_us = r.string()?.parse().map_err(|_| r.bad("created_us is not a number"))?;
                let started_us = r.string()?.parse().map_err(|_| r.bad("started_us is not a number"))?;
                let context = turn_context(&mut r)?;
                Ok(StartOutcome::Run { attempt, history, opts, created_us, started_us, context })
            }
            "skip" => Ok(StartOutcome::Skip { status: r.string()? }),
            "gone" => Ok(StartOutcome::Gone),
            "held" => Ok(StartOutcome::Held),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    /// Appends a delta. `abandon_ms` > 0 stops the turn once nobody watched it that long.
    /// `audit`: who answered, recorded with this delta.
    pub async fn emit(
        &self,
        base: &str,
        turn_id: &str,
        attempt: u32,
        text: &str,
        abandon_ms: u64,
        audit: Option<&TurnAudit>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut args: Vec<Value> = vec![
            turn_id.into(),
            attempt.to_string().into(),
            text.into(),
            self.lease_ms.as_str().into(),
            self.log_max.as_str().into(),
            abandon_ms.to_string().into(),
            self.ttl.as_str().into(),
        ];
        args.extend(TurnAudit::args(audit));
        let r = self.call("cf1_emit", vec![base.into()], args).await?;
        write_outcome(r)
    }

    pub async fn tool_status(
        &self,
        base: &str,
        turn_id: &str,
        attempt: u32,
        name: &str,
        state: &str,
    ) -> Result<WriteOutcome, StoreError> {
        let r = self
            .call(
                "cf1_tool_status",
                vec![base.into()],
                vec![
                    turn_id.into(),
                    attempt.to_string().into(),
                    name.into(),
                    state.into(),
                    self.lease_ms.as_str().into(),
                    self.log_max.as_str().into(),
                ],
            )
            .await?;
        write_outcome(r)
    }

    /// `tool_status` that also stores the call's record under `record_key` in the turn's tools
    /// hash, in the same atomic step.
    #[allow(clippy::too_many_arguments)]
    pub async fn tool_status_recorded(
        &self,
        base: &str,
        turn_id: &str,
        attempt: u32,
        name: &str,
        state: &str,
        record_key: &str,
        record: &[u8],
    ) -> Result<WriteOutcome, StoreError> {
        let r = self
            .call(
                "cf1_tool_status",
                vec![base.into()],
                vec![
                    turn_id.into(),
                    attempt.to_string().into(),
                    name.into(),
                    state.into(),
                    self.lease_ms.as_str().into(),
                    self.log_max.as_str().into(),
                    record_key.into(),
                    Value::Bytes(Bytes::copy_from_slice(record)),
                    self.ttl.as_str().into(),
                ],
            )
            .await?;
        write_outcome(r)
    }

    /// Records which upstream and model answered, and the prompt template version. False when
    /// fenced.
    pub async fn turn_audit(
        &self,
        base: &str,
        turn_id: &str,
        attempt: u32,
        audit: &TurnAudit,
    ) -> Result<bool, StoreError> {
        let args: Vec<Value> =
            [turn_id.into(), attempt.to_string().into()].into_iter().chain(TurnAudit::args(Some(audit))).collect();
        let v: i64 = self.redis.client().fcall("cf1_turn_audit", vec![base.to_string()], args).await?;
        Ok(v == 1)
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
        let v: i64 = self
            .redis
            .client()
            .fcall(
                "cf1_put_summary",
                vec![base.to_string()],
                vec![epoch.to_string(), upto.to_string(), text.to_string(), template.to_string(), self.ttl.clone()],
            )
            .await?;
        Ok(v == 1)
    }

    /// Extends the lease. `Ok(None)` when fenced, else the cancel flag.
    pub async fn heartbeat(
        &self,
        base: &str,
        turn_id: &str,
        attempt: u32,
        abandon_ms: u64,
    ) -> Result<Option<bool>, StoreError> {
        let mut r = self
            .call(
                "cf1_heartbeat",
                vec![base.into()],
                vec![
                    turn_id.into(),
                    attempt.to_string().into(),
                    self.lease_ms.as_str().into(),
                    abandon_ms.to_string().into(),
                ],
            )
            .await?;
        let ok = r.int()? == 1;
        let cancel = r.int()? == 1;
        Ok(ok.then_some(cancel))
    }

    /// Ends the turn. `Ok(None)` when fenced, else the seq of the final event.
    pub async fn finish_turn(&self, base: &str, partition: u16, f: &FinishArgs<'_>) -> Result<Option<u64>, StoreError> {
        let mut r = self
            .call(
                "cf1_finish_turn",
                vec![base.into(), self.keys.stream(partition), self.keys.dlq(partition)],
                vec![
                    f.turn_id.into(),
                    f.attempt.to_string().into(),
                    f.outcome.into(),
                    GROUP.into(),
                    f.entry_id.into(),
                    self.ttl.as_str().into(),
                    self.log_max.as_str().into(),
                    self.hist_max.as_str().into(),
                    f.prompt_tokens.to_string().into(),
                    f.completion_tokens.to_string().into(),
                    f.error_code.into(),
                    f.error_message.into(),
                    if f.dead_letter { "1" } else { "0" }.into(),
                ]
                .into_iter()
                .chain(TurnAudit::args(f.audit))
                .collect(),
            )
            .await?;
        match r.string()?.as_str() {
            "ok" => Ok(Some(r.int()? as u64)),
            "fenced" => Ok(None),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    pub async fn cancel_turn(&self, s: &SessionKeys, turn_id: &str) -> Result<CancelOutcome, StoreError> {
        let mut r = self
            .call(
                "cf1_cancel_turn",
                vec![s.base.clone()],
                vec![
                    turn_id.into(),
                    self.log_max.as_str().into(),
                    self.worker_channel_prefix.as_str().into(),
                    self.hist_max.as_str().into(),
                ],
            )
            .await?;
        match r.string()?.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled { seq: r.int()? as u64 }),
            "cancelling" => Ok(CancelOutcome::Cancelling { worker: r.string()? }),
            "ended" => Ok(CancelOutcome::Ended { status: r.string()? }),
            "unknown" => Ok(CancelOutcome::Unknown),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    /// One sweep of partition `p`; returns the next cursor and the turns now claimed by `worker`.
    pub async fn reclaim(&self, p: u16, worker: &str, cursor: &str) -> Result<(String, Vec<Claimed>), StoreError> {
        let w = &self.sweep;
        let mut r = self
            .call(
                "cf1_reclaim",
                vec![self.keys.stream(p), self.keys.sweep_lock(p), self.keys.dlq(p)],
                vec![
                    GROUP.into(),
                    worker.into(),
                    w.lock_ms.to_string().into(),
                    w.min_idle_ms.to_string().into(),
                    w.batch.to_string().into(),
                    w.max_attempts.to_string().into(),
                    self.log_max.as_str().into(),
                    self.hist_max.as_str().into(),
                    self.ttl.as_str().into(),
                    cursor.into(),
                    w.consumer_gc_idle_ms.to_string().into(),
                ],
            )
            .await?;
        let next = r.string()?;
        let mut list = r.array()?;
        let mut claimed = Vec::with_capacity(list.len());
        while list.len() > 0 {
            let mut c = list.array()?;
            claimed.push(Claimed {
                entry_id: c.string()?,
                base: c.string()?,
                turn_id: c.string()?,
                traceparent: c.string()?,
            });
        }
        Ok((next, claimed))
    }

    /// Hands a running turn back (drain). False when this attempt was already fenced.
    pub async fn release_turn(&self, base: &str, turn_id: &str, attempt: u32) -> Result<bool, StoreError> {
        let v: i64 = self
            .redis
            .client()
            .fcall(
                "cf1_release_turn",
                vec![base.to_string()],
                vec![turn_id.to_string(), attempt.to_string(), self.log_max.clone()],
            )
            .await?;
        Ok(v == 1)
    }

    /// Opens a session for a client; `attach` counts a lasting connection (see `detach`).
    pub async fn open_session(
        &self,
        s: &SessionKeys,
        epoch_candidate: &str,
        client_epoch: Option<&str>,
        last_seq: Option<u64>,
        attach: bool,
    ) -> Result<Opened, StoreError> {
        let mut r = self
            .call(
                "cf1_open_session",
                vec![s.base.clone()],
                vec![
                    epoch_candidate.into(),
                    client_epoch.unwrap_or("").into(),
                    last_seq.map(|s| s.to_string()).unwrap_or_default().into(),
                    self.replay_max.as_str().into(),
                    self.hist_max.as_str().into(),
                    self.ttl.as_str().into(),
                    if attach { "1" } else { "0" }.into(),
                ],
            )
            .await?;
        let kind = r.string()?;
        let epoch = r.string()?;
        let seq = r.int()? as u64;
        match kind.as_str() {
            "replay" => Ok(Opened::Replay { epoch, seq, events: events(r.array()?)? }),
            "snapshot" => {
                let mut h = r.array()?;
                let mut history = Vec::with_capacity(h.len());
                while h.len() > 0 {
                    history.push(payload::decode_history(&h.bytes()?)?);
                }
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

    /// Takes or renews the leader lock `lock` for `id`; true while `id` leads.
    pub async fn lead(&self, lock: &str, id: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let v: i64 = self
            .redis
            .client()
            .fcall("cf1_lead", vec![lock.to_string()], vec![id.to_string(), ttl_ms.to_string()])
            .await?;
        Ok(v == 1)
    }

    /// A lasting connection of the session closed; returns how many are still attached.
    pub async fn detach(&self, base: &str) -> Result<i64, StoreError> {
        let n: i64 = self.redis.client().fcall("cf1_detach", vec![base.to_string()], Vec::<String>::new()).await?;
        Ok(n)
    }

    /// Events after `after`, at most `count`, if the session is still on `epoch`.
    pub async fn read_log(&self, base: &str, after: u64, count: u64, epoch: &str) -> Result<LogRead, StoreError> {
        let v: Value = self
            .redis
            .client()
            .fcall_ro(
                "cf1_read_log",
                vec![base.to_string()],
                vec![after.to_string(), count.to_string(), epoch.to_string()],
            )
            .await?;
        let mut r = Reply::new("cf1_read_log", v)?;
        match r.string()?.as_str() {
            "ok" => Ok(LogRead::Events(events(r.array()?)?)),
            "epoch" => Ok(LogRead::EpochChanged),
            "trimmed" => Ok(LogRead::Trimmed),
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }
}

fn write_outcome(mut r: Reply) -> Result<WriteOutcome, StoreError> {
    let seq = r.int()?;
    let cancel = r.int()? == 1;
    Ok(if seq == 0 { WriteOutcome::Fenced } else { WriteOutcome::Written { seq: seq as u64, cancel } })
}

fn events(mut list: Reply) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
    let mut out = Vec::with_capacity(list.len());
    while list.len() > 0 {
        let mut e = list.array()?;
        let seq = e.int()? as u64;
        out.push((seq, payload::decode_event(&e.bytes()?)?));
    }
    Ok(out)
}

/// The context part of `start_turn`'s reply: epoch, flags, summary, tool records.
fn turn_context(r: &mut Reply) -> Result<TurnContext, StoreError> {
    let epoch = r.string()?;
    let mut f = r.array()?;
    let mut flags = Vec::with_capacity(f.len());
    while f.len() > 0 {
        flags.push(f.string()?);
    }
    let upto = r.string()?;
    let text = r.string()?;
    let mut list = r.array()?;
    let mut tool_records = Vec::with_capacity(list.len());
    while list.len() > 0 {
        tool_records.push(list.bytes()?);
    }
    let summary = (!upto.is_empty()).then_some((upto, text));
    Ok(TurnContext { epoch, flags, summary, tool_records })
}

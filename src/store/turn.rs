//! What a worker does with a turn: start it (which fences every later write to the attempt it
//! gets), then write through a [`TurnWriter`]: deltas, tool statuses, heartbeats, the audit, and
//! the end (finish or release).
//!
//! Each write names its turn, attempt and a write index within the attempt. The turn hash keeps
//! the last index applied and its reply, so a write that is sent again (the Redis client resends
//! a command whose connection dropped before the reply came) returns its first reply and writes
//! nothing: no doubled delta, no second tool event, no second end.
//!
//! Each delta and the end also carry the partial text's length as the worker's deltas add up.
//! When Redis lost acknowledged writes (a failover to a replica that had not received them), the
//! lengths differ: the writer re-sends its text from where Redis stands, so the answer stored and
//! shown has no hole where the lost deltas were.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use fred::prelude::*;

use super::ops::OpBuilder;
use super::reply::Reply;
use super::{Store, StoreError};
use crate::keys::{history_key, Keyspace};
use crate::payload::{self, HistoryMessage};

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

/// What a starting attempt reads besides its history: the context part of `start`'s reply.
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

/// Which upstream and model answered a round, and the prompt template version: recorded on the
/// turn by the round's next fenced write (`emit`, `finish`), so the audit never costs a round
/// trip of its own before the first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnAudit {
    pub upstream: String,
    pub model: String,
    pub template: String,
}

/// Where a turn's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageSource {
    /// The upstream reported them.
    #[default]
    Reported,
    /// The upstream sent none; the worker counted them itself.
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// How a turn ends, for [`TurnWriter::finish`].
#[derive(Debug, Clone)]
pub struct FinishArgs<'a> {
    /// `done`, `error` or `cancelled`.
    pub outcome: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usage_source: UsageSource,
    pub error_code: &'a str,
    pub error_message: &'a str,
    /// Also record the turn in the dead-letter stream.
    pub dead_letter: bool,
    /// Who answered, when no earlier write of the round recorded it.
    pub audit: Option<&'a TurnAudit>,
    /// The `done` event's citations, as a JSON array of `{document, chunk, title?}`.
    pub citations: Option<&'a str>,
}

impl Store {
    /// Starts a delivered turn: queued → running under a new attempt, and everything the attempt
    /// reads before calling the model, in one op.
    pub async fn start_turn(
        &self,
        base: &str,
        turn_id: &str,
        entry_id: &str,
        worker: &str,
    ) -> Result<StartOutcome, StoreError> {
        // A resend of this start is recognised by the request id and answered `run` again.
        let request = uuid::Uuid::new_v4().simple().to_string();
        self.start_turn_as(base, turn_id, entry_id, worker, &request).await
    }

    /// [`Store::start_turn`] under a given request id.
    pub(super) async fn start_turn_as(
        &self,
        base: &str,
        turn_id: &str,
        entry_id: &str,
        worker: &str,
        request: &str,
    ) -> Result<StartOutcome, StoreError> {
        let p = Keyspace::partition_in(base).unwrap_or(0);
        let op = OpBuilder::turn("start", base, turn_id)
            .key(self.keys.stream(p))
            .str(turn_id)
            .str(entry_id)
            .str(worker)
            .str(request)
            .str("1")
            .build();
        // The history is read beside the op, as a plain LRANGE (the op's reply holds none): see
        // `start_reply` in lua/chatfleet.lua for why, and why it cannot change in between.
        let (r, read) = tokio::join!(self.op(base, op), self.read_history(base));
        let mut r = r?;
        match r.string()?.as_str() {
            "run" => {
                let attempt = r.int()? as u32;
                r.array()?;
                let history = match read {
                    Ok(h) => h,
                    // The attempt owns the turn now: read again while Redis cannot be reached.
                    Err(e) if e.is_transient() => self.while_unreachable(|| self.read_history(base), || {}).await?,
                    Err(e) => return Err(e),
                };
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

    /// The session's history as a starting turn reads it: its last `history_max_messages`.
    async fn read_history(&self, base: &str) -> Result<Vec<HistoryMessage>, StoreError> {
        let list: Vec<Bytes> = self.redis.client().lrange(history_key(base), -(self.hist_max as i64), -1).await?;
        list.iter().map(|m| payload::decode_history(m).map_err(StoreError::from)).collect()
    }

    /// Calls `f` again, with a growing pause, while it fails for want of Redis (a failover, a
    /// stall past the command timeout), for up to `write_retry`; `on_retry` runs before each new
    /// try. For a started attempt's calls, which are safe to send again: giving the turn up at
    /// the first timeout would leave the user waiting for the lease.
    async fn while_unreachable<T, Fut>(&self, mut f: impl FnMut() -> Fut, on_retry: impl Fn()) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let give_up = tokio::time::Instant::now() + self.write_retry;
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            match f().await {
                Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < give_up => {
                    on_retry();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// The writer of a started attempt.
    pub fn writer(&self, base: &str, turn_id: &str, entry_id: &str, attempt: u32) -> TurnWriter {
        TurnWriter {
            store: self.clone(),
            base: base.to_string(),
            turn_id: turn_id.to_string(),
            entry_id: entry_id.to_string(),
            attempt,
            written: AtomicU64::new(0),
            began: std::time::Instant::now(),
            full_emit_ms: AtomicU64::new(0),
            emitted: Mutex::new(String::new()),
            last_delta: AtomicUsize::new(0),
        }
    }
}

/// The fenced writes of one attempt of one turn, each with the next write index.
pub struct TurnWriter {
    store: Store,
    base: String,
    turn_id: String,
    entry_id: String,
    attempt: u32,
    /// Index of the last write sent (the first write is 1).
    written: AtomicU64,
    /// When the writer was made, and when (ms after it) a delta last declared the whole session.
    began: std::time::Instant,
    full_emit_ms: AtomicU64,
    /// The text of every delta Redis acknowledged: what the session's partial text must hold.
    emitted: Mutex<String>,
    /// Bytes the last write added to `emitted` (0 when it was not a delta).
    last_delta: AtomicUsize,
}

/// Rounds of re-sending lost text before a write gives up (each one follows a failover that lost
/// writes; two in a row within one write is already unheard of).
const REPAIRS: usize = 3;

impl TurnWriter {
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Makes the next write reuse the last write's index: what a resend of that write looks like
    /// to Redis.
    /// The text of the last delta, if that write was one, is taken back too: the resend adds it.
    #[cfg(test)]
    pub(super) fn rewind(&self) {
        self.written.fetch_sub(1, Ordering::Relaxed);
        let mut emitted = self.emitted.lock().expect("emitted lock");
        let keep = emitted.len() - self.last_delta.swap(0, Ordering::Relaxed);
        emitted.truncate(keep);
    }

    /// An op of this turn, headed by (turn, attempt, next write index).
    fn head(&self, kind: &'static str, index: u64) -> OpBuilder {
        let b = if kind == "emitc" {
            OpBuilder::delta(kind, &self.base, &self.turn_id)
        } else {
            OpBuilder::turn(kind, &self.base, &self.turn_id)
        };
        b.str(&self.turn_id).uint(u64::from(self.attempt)).uint(index)
    }

    /// The kind of the next delta: `emitc` (only the keys a delta writes), or `emit` (the whole
    /// session, so the function can refresh its TTL) once every `full_emit_every_ms`.
    fn delta_kind(&self) -> &'static str {
        let now = self.began.elapsed().as_millis() as u64;
        let last = self.full_emit_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.store.full_emit_every_ms {
            return "emitc";
        }
        self.full_emit_ms.store(now, Ordering::Relaxed);
        "emit"
    }

    /// Sends a write with the next index; `body` adds its fields. While Redis cannot be reached
    /// (a failover, a stall past the command timeout) the same write is sent again with the same
    /// index, which is harmless (see the module doc), for up to `store.write_retry`: giving the
    /// turn up at the first timeout would leave the user waiting for the lease and pay for the
    /// answer twice. If a sweeper took the turn over meanwhile, the write comes back fenced.
    async fn send(&self, kind: &'static str, body: impl Fn(OpBuilder) -> OpBuilder) -> Result<Reply, StoreError> {
        self.last_delta.store(0, Ordering::Relaxed);
        let index = self.written.fetch_add(1, Ordering::Relaxed) + 1;
        self.store
            .while_unreachable(
                || self.store.op(&self.base, body(self.head(kind, index)).build()),
                || metrics::counter!(crate::metrics::WORKER_WRITE_RETRIES).increment(1),
            )
            .await
    }

    /// Appends a delta. `abandon_ms` > 0 stops the turn once nobody watched it that long.
    /// `audit`: who answered, recorded with this delta.
    pub async fn emit(
        &self,
        text: &str,
        abandon_ms: u64,
        audit: Option<&TurnAudit>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut send = std::borrow::Cow::Borrowed(text);
        let mut plen = self.emitted_len();
        for _ in 0..REPAIRS {
            let kind = self.delta_kind();
            let mut r = self.send(kind, |b| with_audit(b.str(&send).uint(abandon_ms).uint(plen as u64), audit)).await?;
            let seq = r.int()?;
            let cancel = r.int()? == 1;
            if seq > 0 {
                self.emitted.lock().expect("emitted lock").push_str(text);
                self.last_delta.store(text.len(), Ordering::Relaxed);
                return Ok(WriteOutcome::Written { seq: seq as u64, cancel });
            }
            if seq == 0 {
                return Ok(WriteOutcome::Fenced);
            }
            // Redis holds `have` bytes of the partial text: re-send the rest with this delta.
            let have = r.int()?;
            let Some(lost) = self.lost_since(have) else { return Ok(WriteOutcome::Fenced) };
            metrics::counter!(crate::metrics::WORKER_LOST_TEXT_RESENT).increment(1);
            plen = have as usize;
            send = std::borrow::Cow::Owned(lost + text);
        }
        Err(StoreError::Reply { function: "emit", detail: "the partial text kept losing writes".into() })
    }

    fn emitted_len(&self) -> usize {
        self.emitted.lock().expect("emitted lock").len()
    }

    /// The text acknowledged after byte `have` (what Redis lost); `None` when Redis holds more
    /// than this attempt wrote, or cuts a character: not this attempt's text, so it stops.
    fn lost_since(&self, have: i64) -> Option<String> {
        let emitted = self.emitted.lock().expect("emitted lock");
        let have = usize::try_from(have).ok()?;
        emitted.get(have..).map(str::to_string)
    }

    /// Reports a tool call's state; with `record`, also stores the call's record under its key in
    /// the turn's tools hash, in the same step.
    pub async fn tool_status(
        &self,
        name: &str,
        state: &str,
        record: Option<(&str, &[u8])>,
    ) -> Result<WriteOutcome, StoreError> {
        let r = self
            .send("tool", |b| {
                let b = b.str(name).str(state);
                match record {
                    Some((key, bytes)) => b.str(key).bin(bytes),
                    None => b,
                }
            })
            .await?;
        write_outcome(r)
    }

    /// Extends the lease. `Ok(None)` when fenced, else the cancel flag.
    pub async fn heartbeat(&self, abandon_ms: u64) -> Result<Option<bool>, StoreError> {
        let mut r = self.send("hb", |b| b.uint(abandon_ms)).await?;
        let ok = r.int()? == 1;
        let cancel = r.int()? == 1;
        Ok(ok.then_some(cancel))
    }

    /// Records which upstream and model answered, and the prompt template version. False when
    /// fenced.
    pub async fn audit(&self, audit: &TurnAudit) -> Result<bool, StoreError> {
        let r = self.send("audit", |b| b.str(&audit.upstream).str(&audit.model).str(&audit.template)).await?;
        let mut r = r;
        Ok(r.int()? == 1)
    }

    /// Ends the turn. `Ok(None)` when fenced, else the seq of the final event. Where the enqueue
    /// took the turn's quota slot in its own call ([`Store::quota_with_enqueue`]), the finish
    /// frees it in its own call too; elsewhere the caller frees it (`crate::quota`).
    pub async fn finish(&self, f: &FinishArgs<'_>) -> Result<Option<u64>, StoreError> {
        self.finish_after(f, 0).await
    }

    async fn finish_after(&self, f: &FinishArgs<'_>, repairs: usize) -> Result<Option<u64>, StoreError> {
        let p = Keyspace::partition_in(&self.base).unwrap_or(0);
        let keys = self.store.keys();
        let plen = self.emitted_len() as u64;
        let quota = self.store.quota_with_enqueue().then(|| keys.quota_inflight(crate::keys::tenant_of(&self.base)));
        let mut r = self
            .send("finish", |b| {
                let b = b
                    .key(keys.stream(p))
                    .key(keys.dlq(p))
                    .keys(self.store.archive_key(p))
                    .str(f.outcome)
                    .str(&self.entry_id)
                    .uint(f.prompt_tokens)
                    .uint(f.completion_tokens)
                    .str(f.error_code)
                    .str(f.error_message)
                    .uint(u64::from(f.dead_letter))
                    .str(f.usage_source.as_str())
                    .uint(plen);
                // An empty upstream says "no audit" to the function.
                let b = match f.audit {
                    Some(_) => with_audit(b, f.audit),
                    None => b.str("").str("").str(""),
                }
                .str(f.citations.unwrap_or(""));
                // On a single Redis the finish also frees the turn's quota slot: its in-flight set
                // is declared after the op's other keys, and the field says where.
                match &quota {
                    Some(inflight) => {
                        let at = b.key_count() as u64;
                        b.key(inflight.clone()).uint(at)
                    }
                    None => b.str(""),
                }
            })
            .await?;
        match r.string()?.as_str() {
            "ok" => Ok(Some(r.int()? as u64)),
            "fenced" => Ok(None),
            // Redis lost deltas: an empty delta re-sends them (see `emit`), then the end again.
            "behind" if repairs < REPAIRS => match self.emit("", 0, None).await? {
                WriteOutcome::Written { .. } => Box::pin(self.finish_after(f, repairs + 1)).await,
                WriteOutcome::Fenced => Ok(None),
            },
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    /// Hands the running turn back (drain). False when this attempt was already fenced.
    pub async fn release(&self) -> Result<bool, StoreError> {
        Ok(self.send("release", |b| b).await?.int()? == 1)
    }
}

fn with_audit(b: OpBuilder, audit: Option<&TurnAudit>) -> OpBuilder {
    match audit {
        Some(a) => b.str(&a.upstream).str(&a.model).str(&a.template),
        None => b,
    }
}

fn write_outcome(mut r: Reply) -> Result<WriteOutcome, StoreError> {
    let seq = r.int()?;
    let cancel = r.int()? == 1;
    Ok(if seq == 0 { WriteOutcome::Fenced } else { WriteOutcome::Written { seq: seq as u64, cancel } })
}

/// The context part of `start`'s reply: epoch, flags, summary, tool records.
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

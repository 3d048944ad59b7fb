//! A connection's view of one session: opening (replay or snapshot) and then the live events,
//! strictly in seq order, with every gap filled from the log.
//!
//! Shared by every transport (WebSocket, SSE, long-poll). The rules of docs/protocol.md live
//! here:
//! 1. join the session channel first (confirmed SSUBSCRIBE), so live events are buffered;
//! 2. `open_session` returns the replay after `last_seq` or a snapshot, in one atomic cut at `seq`;
//! 3. live frames with seq ≤ the last sent are dropped; a frame beyond the next expected seq
//!    means events were lost on the way, so the missing ones are read from the log first;
//! 4. on a hub resync (subscriber reconnected, receiver lagged) the log is read after the last
//!    sent seq, so even a lost final event reaches the client.
//!
//! A request that sends its own turn and answers with it (the ingresses) skips rule 2: it joins
//! before the send, the send counts it as watching the session, and it follows from the
//! `user_message` seq the send returned ([`Feed::following`]).
//!
//! Log reads (rules 3 and 4) wait for a turn from the hub (`gateway.max_concurrent_catchups`).
//! Meanwhile live frames keep queueing in the connection's mailbox; the read covers them, and
//! they are dropped as duplicates afterwards, so a late read loses nothing and repeats nothing.
//!
//! The futures that talk to Redis are boxed where they are awaited: they are large (fred's
//! command futures), and an unboxed one would make every connection's task as large as its
//! largest rare path, idle or not.

use std::collections::VecDeque;
use std::sync::Arc;

use super::hub::{Frame, Hub, Overflowed, Subscription};
use crate::keys::SessionKeys;
use crate::protocol::{ActiveTurn, ControlMsg, EventBody, ResumeKind, SnapshotMessage};
use crate::store::{LogRead, Opened, Store, StoreError};

/// Events read from the log per catch-up call.
const CATCHUP_BATCH: u64 = 500;

/// What a transport sends next.
#[derive(Debug)]
pub enum Item {
    /// Events in seq order.
    Frames(Vec<Arc<Frame>>),
    /// The session state, sent instead of events the log no longer has (or after an epoch change).
    Snapshot(ControlMsg),
}

/// Why the feed ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the connection reads too slowly")]
    Overflow,
    /// The session is bound to another user (`session.bind_to_user`).
    #[error("the session belongs to another user")]
    Forbidden,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Overflowed> for FeedError {
    fn from(_: Overflowed) -> Self {
        FeedError::Overflow
    }
}

/// One connection's feed of one session.
///
/// [`Feed::next`] is cancel-safe: transports race it against reads, pings and coalescing
/// windows, and drop it mid-await. So everything it has taken from the hub or the log lives in
/// the struct (`inbox`, `ready`, `stale`) and `last` only moves together with `ready`; an await
/// that is dropped loses nothing, and the next call carries on where it stopped.
pub struct Feed {
    store: Arc<Store>,
    keys: SessionKeys,
    sub: Subscription,
    /// Boxed: every idle connection holds a feed, and the capacity is never used.
    epoch: Box<str>,
    /// The last seq taken into `ready` (or handed to the transport).
    last: u64,
    /// The frame at `last`, when the feed has it (not after a snapshot): a catch-up read checks
    /// that the log still holds it there, which is how writes Redis lost and then reused the
    /// seqs of are found (see `cf3_read_log`).
    held: Option<Arc<Frame>>,
    /// Live frames taken from the hub and not yet judged, oldest first.
    inbox: VecDeque<Arc<Frame>>,
    /// Frames in seq order, ready for the transport.
    ready: Vec<Arc<Frame>>,
    /// The log must be read after `last` (a gap, or a hub resync) before more live frames.
    stale: bool,
    /// The id this lasting connection is counted under in the session (detached when the feed
    /// is dropped); 0 when it is not counted (long-poll).
    conn: u64,
    /// Who opened the session, for the owner check of a later snapshot (see `Store::open_session`).
    actor: Box<str>,
}
impl Drop for Feed {
    fn drop(&mut self) {
        if self.conn != 0 {
            let (store, base, conn) = (self.store.clone(), self.keys.base.clone(), self.conn);
            // Bounded by the command timeout; a lost detach only keeps a turn generating.
            tokio::spawn(async move {
                if let Err(e) = store.detach(&base, &format!("{conn:x}")).await {
                    tracing::warn!(error = %e, "detach failed");
                }
            });
        }
    }
}

/// The first frames of a feed: `welcome`, then a replay or a snapshot.
pub struct Opening {
    pub welcome: ControlMsg,
    pub first: Item,
}

impl Feed {
    /// Opens the session for a client that has `last_seq` of `epoch` (or nothing). `attach`: a
    /// lasting connection (WebSocket, SSE) that counts as watching the session. `actor`: who
    /// opens it, for the owner check ([`crate::auth::Identity::actor`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        hub: &Hub,
        store: &Arc<Store>,
        keys: SessionKeys,
        session_id: &str,
        epoch: Option<&str>,
        last_seq: Option<u64>,
        attach: bool,
        actor: &str,
    ) -> Result<(Self, Opening), FeedError> {
        let sub = hub.join(&keys.channel()).await?;
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        let conn = if attach { Self::new_conn_id() } else { 0 };
        let conn_id = (conn != 0).then(|| format!("{conn:x}"));
        let opened = store.open_session(&keys, &candidate, epoch, last_seq, conn_id.as_deref(), actor).await?;
        let (epoch, seq, first, resume) = match opened {
            Opened::Forbidden => return Err(FeedError::Forbidden),
            Opened::Replay { epoch, seq, events } => {
                let frames: Vec<_> = events.into_iter().map(|(s, e)| Frame::new(s, e.into())).collect();
                (epoch, seq, Item::Frames(frames), ResumeKind::Replay)
            }
            Opened::Snapshot { epoch, seq, history, active_turn, partial, reason } => {
                let snap = snapshot(epoch.clone(), seq, history, active_turn, partial, reason);
                (epoch, seq, Item::Snapshot(snap), ResumeKind::Snapshot)
            }
        };
        metrics::counter!(crate::metrics::GATEWAY_RESUMES, "resume" => resume_label(resume)).increment(1);
        let welcome = ControlMsg::Welcome { session_id: session_id.to_string(), epoch: epoch.clone(), seq, resume };
        // The open's cut is consistent at `seq`: live frames after it are all that is missing.
        let mut feed = Self::following(store, keys, sub, epoch, seq, conn, actor, true);
        if let Item::Frames(frames) = &first {
            feed.held = frames.last().filter(|f| f.seq == seq).cloned();
        }
        Ok((feed, Opening { welcome, first }))
    }

    /// A random id for a lasting connection: a resent open, enqueue or detach counts it once.
    pub fn new_conn_id() -> u64 {
        rand::random::<u64>() | 1
    }

    /// Follows a session from a send made on `sub`'s behalf, for a request that answers with its
    /// own turn (the ingresses): `sub` was joined *before* the send, so every event after the
    /// `user_message` at `seq` of `epoch` reaches it live and no open (replay or snapshot) is
    /// needed. `conn` was counted as watching the session by that send (`NewMessage::follower`),
    /// and is detached when the feed is dropped. `fresh`: false for a repeated send, whose events
    /// may all be past already, so the log after `seq` is read first.
    #[allow(clippy::too_many_arguments)]
    pub fn following(
        store: &Arc<Store>,
        keys: SessionKeys,
        sub: Subscription,
        epoch: String,
        seq: u64,
        conn: u64,
        actor: &str,
        fresh: bool,
    ) -> Self {
        Self {
            store: store.clone(),
            keys,
            sub,
            epoch: epoch.into(),
            last: seq,
            held: None,
            inbox: VecDeque::new(),
            ready: Vec::new(),
            stale: !fresh,
            conn,
            actor: actor.into(),
        }
    }

    /// The session's keys.
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// The session epoch of the frames handed out so far.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Waits for the next events (or a snapshot), in order. Cancel-safe (see [`Feed`]).
    pub async fn next(&mut self) -> Result<Item, FeedError> {
        loop {
            if let Some(item) = self.try_next().await? {
                return Ok(item);
            }
            self.sub.mailbox.woken().await;
        }
    }

    /// The next events (or a snapshot), in order, if there are any now: `None` when the hub has
    /// nothing new, without waiting for it (a log read that is due still waits for its turn and
    /// Redis). After `None`, the mailbox's [`woken`](super::hub::Mailbox::woken) says when to look
    /// again. Cancel-safe (see [`Feed`]).
    pub async fn try_next(&mut self) -> Result<Option<Item>, FeedError> {
        loop {
            if self.sub.mailbox.is_overflowed() {
                return Err(FeedError::Overflow);
            }
            if self.sub.mailbox.take_resync() {
                self.stale = true;
            }
            if self.stale {
                if let Some(snapshot) = Box::pin(self.read_after()).await? {
                    return Ok(Some(snapshot));
                }
                self.stale = false;
            }
            if let Some(snapshot) = self.judge_inbox().await? {
                return Ok(Some(snapshot));
            }
            if self.stale {
                continue;
            }
            if !self.ready.is_empty() {
                return Ok(Some(Item::Frames(std::mem::take(&mut self.ready))));
            }
            // Everything already queued at once, so a slow reader gets batches.
            let batch = self.sub.mailbox.take_now();
            if batch.is_empty() {
                return Ok(None);
            }
            if self.inbox.is_empty() {
                self.inbox = batch;
            } else {
                self.inbox.extend(batch);
            }
        }
    }

    /// Completes when this connection's queue overflowed (it reads too slowly).
    pub async fn overflowed(&self) {
        self.sub.mailbox.overflowed().await
    }

    /// The connection's queue in the hub.
    pub fn mailbox(&self) -> &Arc<super::hub::Mailbox> {
        &self.sub.mailbox
    }

    /// Tells the hub's byte accounting that `bytes` of queued frames were written.
    pub fn written(&self, bytes: usize) {
        self.sub.mailbox.written(bytes);
    }

    /// Moves in-order live frames from `inbox` to `ready`. Stops at a frame past the next
    /// expected seq and marks the feed stale: the log fills the gap, and that frame is then
    /// judged again (the fill covers it, so it is dropped as already seen).
    async fn judge_inbox(&mut self) -> Result<Option<Item>, FeedError> {
        while let Some(f) = self.inbox.front() {
            if f.epoch.as_deref().is_some_and(|e| e != &*self.epoch) {
                // The session was lost and recreated under us: seqs restarted, so nothing
                // collected so far is comparable. Start over from a snapshot.
                return Ok(Some(Box::pin(self.resnapshot()).await?));
            }
            if f.seq > self.last + 1 {
                self.stale = true;
                return Ok(None);
            }
            let f = self.inbox.pop_front().expect("front exists");
            if f.seq <= self.last {
                self.written(f.json.len());
                continue;
            }
            self.last = f.seq;
            self.held = Some(f.clone());
            self.ready.push(f);
        }
        // The queue's storage came from the hub's last batch; an idle connection keeps none.
        self.inbox = VecDeque::new();
        Ok(None)
    }

    /// Reads the log after `last` into `ready`, in its turn; a snapshot when the log cannot fill
    /// the gap. Each completed read moves `last` and `ready` together, so a cancelled call keeps
    /// what it read. Frames read this way are not in the hub's byte accounting.
    async fn read_after(&mut self) -> Result<Option<Item>, FeedError> {
        let _turn = self.sub.log_read_turn().await?;
        let mut anchored = self.held.is_some();
        loop {
            let read = self.store.read_log(&self.keys.base, self.last, CATCHUP_BATCH, &self.epoch, anchored).await?;
            anchored = false;
            match read {
                // The log holds another event where this connection's last one was: Redis lost
                // writes it saw, and new writes took their seqs. Same remedy as `Behind`.
                LogRead::Events { anchor: Some(a), .. }
                    if self.held.as_ref().is_some_and(|h| h.body != a.clone().into()) =>
                {
                    return Ok(Some(self.snapshot_now().await?));
                }
                LogRead::Events { events, .. }
                    if events.is_empty() && self.inbox.front().is_some_and(|f| f.seq > self.last + 1) =>
                {
                    // A live frame is ahead of everything the log has after `last`: the log
                    // cannot fill the gap (lost writes, a trimmed log). Reading again would spin.
                    return Ok(Some(self.snapshot_now().await?));
                }
                LogRead::Events { events, .. } => {
                    let n = events.len() as u64;
                    for (seq, ev) in events {
                        let f = Frame::new(seq, ev.into());
                        self.last = seq;
                        self.held = Some(f.clone());
                        self.ready.push(f);
                    }
                    if n < CATCHUP_BATCH {
                        return Ok(None);
                    }
                }
                // `Behind`: Redis lost writes this connection saw (a failover to a lagging replica,
                // a restart from an older snapshot) with the epoch unchanged. The session's truth
                // is what Redis holds now, so the client gets it as a snapshot.
                LogRead::EpochChanged | LogRead::Trimmed | LogRead::Behind { .. } => {
                    return Ok(Some(self.snapshot_now().await?))
                }
            }
        }
    }

    /// Takes a fresh snapshot (the log cannot fill the gap, or the epoch changed), in its turn.
    async fn resnapshot(&mut self) -> Result<Item, FeedError> {
        let _turn = self.sub.log_read_turn().await?;
        self.snapshot_now().await
    }

    /// Takes a fresh snapshot; the caller holds a log-read turn.
    async fn snapshot_now(&mut self) -> Result<Item, FeedError> {
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        match self.store.open_session(&self.keys, &candidate, None, None, None, &self.actor).await? {
            Opened::Forbidden => Err(FeedError::Forbidden),
            Opened::Snapshot { epoch, seq, history, active_turn, partial, reason } => {
                self.epoch = epoch.as_str().into();
                self.last = seq;
                self.held = None;
                // The snapshot supersedes what was collected. Every frame in the inbox was
                // published before this snapshot was cut (or belongs to the lost epoch), so
                // dropping them loses nothing.
                self.stale = false;
                self.ready.clear();
                let dropped: usize = self.inbox.drain(..).map(|f| f.json.len()).sum();
                self.written(dropped);
                Ok(Item::Snapshot(snapshot(epoch, seq, history, active_turn, partial, reason)))
            }
            Opened::Replay { .. } => unreachable!("open_session without last_seq always snapshots"),
        }
    }
}

fn snapshot(
    epoch: String,
    seq: u64,
    history: Vec<crate::payload::HistoryMessage>,
    active_turn: Option<String>,
    partial: String,
    reason: String,
) -> ControlMsg {
    ControlMsg::Snapshot {
        epoch,
        seq,
        messages: history.into_iter().map(SnapshotMessage::from).collect(),
        active: active_turn.map(|turn_id| ActiveTurn { turn_id, text: partial }),
        reason,
    }
}

fn resume_label(k: ResumeKind) -> &'static str {
    match k {
        ResumeKind::Replay => "replay",
        ResumeKind::Snapshot => "snapshot",
    }
}

/// Largest text of one merged delta: merging saves frames, but one frame must stay small enough
/// to write promptly and to fit any client's message limit.
pub const MERGED_DELTA_MAX: usize = 64 * 1024;

/// Merges runs of consecutive deltas of one turn into one frame (a slow or coalescing client),
/// each merged frame holding at most [`MERGED_DELTA_MAX`] bytes of text.
pub fn merge_deltas(frames: Vec<Arc<Frame>>) -> Vec<Arc<Frame>> {
    let mut out: Vec<Arc<Frame>> = Vec::with_capacity(frames.len());
    let mut run: Vec<Arc<Frame>> = Vec::new();
    let flush = |run: &mut Vec<Arc<Frame>>, out: &mut Vec<Arc<Frame>>| match run.len() {
        0 => {}
        1 => out.push(run.pop().expect("one")),
        _ => {
            let first_seq = run[0].seq;
            let last = run.last().expect("non-empty");
            let turn_id = last.body.turn_id().to_string();
            let text: String = run
                .iter()
                .map(|f| match &f.body {
                    EventBody::Delta { text, .. } => text.as_str(),
                    _ => "",
                })
                .collect();
            let body = EventBody::Delta { turn_id, text };
            let event = crate::protocol::Event { seq: last.seq, first_seq: Some(first_seq), body: body.clone() };
            let json = crate::protocol::encode(&event).into();
            out.push(Arc::new(Frame { seq: last.seq, epoch: last.epoch.clone(), body, json }));
            run.clear();
        }
    };
    let mut run_bytes = 0;
    for f in frames {
        let len = match &f.body {
            EventBody::Delta { text, .. } => Some(text.len()),
            _ => None,
        };
        let joins = len.is_some_and(|l| run_bytes + l <= MERGED_DELTA_MAX)
            && run.last().is_some_and(|r| r.body.turn_id() == f.body.turn_id());
        if !joins {
            flush(&mut run, &mut out);
            run_bytes = 0;
        }
        match len {
            Some(l) => {
                run_bytes += l;
                run.push(f);
            }
            None => out.push(f),
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod cancel_tests;

#[cfg(test)]
mod lost_write_tests;

#[cfg(test)]
mod fixture;

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(seq: u64, turn: &str, text: &str) -> Arc<Frame> {
        Frame::new(seq, EventBody::Delta { turn_id: turn.into(), text: text.into() })
    }

    #[test]
    fn a_long_run_of_deltas_is_merged_into_frames_of_bounded_size() {
        let chunk = "x".repeat(1000);
        let frames: Vec<_> = (1..=200).map(|i| delta(i, "a", &chunk)).collect();
        let out = merge_deltas(frames);
        assert!(out.len() >= 200 * 1000 / MERGED_DELTA_MAX);
        let mut next = 1;
        for f in &out {
            let EventBody::Delta { text, .. } = &f.body else { panic!() };
            assert!(text.len() <= MERGED_DELTA_MAX);
            let first: serde_json::Value = serde_json::from_str(&f.json).unwrap();
            assert_eq!(first["first_seq"].as_u64().unwrap_or(f.seq), next, "merged frames cover every seq once");
            next = f.seq + 1;
        }
        assert_eq!(next, 201);
    }

    #[test]
    fn consecutive_deltas_of_one_turn_merge_and_others_do_not() {
        let frames = vec![
            delta(1, "a", "x"),
            delta(2, "a", "y"),
            Frame::new(3, EventBody::Cancelled { turn_id: "a".into() }),
            delta(4, "b", "z"),
        ];
        let out = merge_deltas(frames);
        assert_eq!(out.len(), 3);
        assert_eq!(&*out[0].json, r#"{"seq":2,"first_seq":1,"type":"delta","turn_id":"a","text":"xy"}"#);
        assert_eq!(out[1].seq, 3);
        assert_eq!(&*out[2].json, r#"{"seq":4,"type":"delta","turn_id":"b","text":"z"}"#);
    }
}

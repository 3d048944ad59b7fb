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
//! Log reads (rules 3 and 4) wait for a turn from the hub (`gateway.max_concurrent_catchups`).
//! Meanwhile live frames keep queueing in the connection's mailbox; the read covers them, and
//! they are dropped as duplicates afterwards, so a late read loses nothing and repeats nothing.
//!
//! The futures that talk to Redis are boxed where they are awaited: they are large (fred's
//! command futures), and an unboxed one would make every connection's task as large as its
//! largest rare path, idle or not.

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Overflowed> for FeedError {
    fn from(_: Overflowed) -> Self {
        FeedError::Overflow
    }
}

/// One connection's feed of one session.
pub struct Feed {
    store: Store,
    keys: SessionKeys,
    sub: Subscription,
    epoch: String,
    /// The last seq handed to the transport.
    last: u64,
    /// A lasting connection counted in the session (detached when the feed is dropped).
    attached: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if self.attached {
            let (store, base) = (self.store.clone(), self.keys.base.clone());
            // Bounded by the command timeout; a lost detach only keeps a turn generating.
            tokio::spawn(async move {
                if let Err(e) = store.detach(&base).await {
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
    /// lasting connection (WebSocket, SSE) that counts as watching the session.
    pub async fn open(
        hub: &Hub,
        store: &Store,
        keys: SessionKeys,
        session_id: &str,
        epoch: Option<&str>,
        last_seq: Option<u64>,
        attach: bool,
    ) -> Result<(Self, Opening), FeedError> {
        let sub = hub.join(&keys.channel()).await?;
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        let opened = store.open_session(&keys, &candidate, epoch, last_seq, attach).await?;
        let (epoch, seq, first, resume) = match opened {
            Opened::Replay { epoch, seq, events } => {
                let frames = events.into_iter().map(|(s, e)| Frame::new(s, e.into())).collect();
                (epoch, seq, Item::Frames(frames), ResumeKind::Replay)
            }
            Opened::Snapshot { epoch, seq, history, active_turn, partial, reason } => {
                let snap = snapshot(epoch.clone(), seq, history, active_turn, partial, reason);
                (epoch, seq, Item::Snapshot(snap), ResumeKind::Snapshot)
            }
        };
        metrics::counter!(crate::metrics::GATEWAY_RESUMES, "resume" => resume_label(resume)).increment(1);
        let welcome = ControlMsg::Welcome { session_id: session_id.to_string(), epoch: epoch.clone(), seq, resume };
        Ok((Self { store: store.clone(), keys, sub, epoch, last: seq, attached: attach }, Opening { welcome, first }))
    }

    /// The session's keys.
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// Waits for the next events (or a snapshot), in order.
    pub async fn next(&mut self) -> Result<Item, FeedError> {
        loop {
            if self.sub.mailbox.is_overflowed() {
                return Err(FeedError::Overflow);
            }
            tokio::select! {
                biased;
                changed = self.sub.resync.changed() => {
                    if changed.is_err() {
                        return Err(FeedError::Store(StoreError::Reply { function: "hub", detail: "hub stopped".into() }));
                    }
                    if let Some(item) = Box::pin(self.catch_up()).await? {
                        return Ok(item);
                    }
                }
                // Everything already queued at once, so a slow reader gets batches.
                batch = self.sub.mailbox.take() => {
                    if let Some(item) = self.accept(batch?).await? {
                        return Ok(item);
                    }
                }
            }
        }
    }

    /// Completes when this connection's queue overflowed (it reads too slowly).
    pub async fn overflowed(&self) {
        self.sub.mailbox.overflowed().await
    }

    /// Tells the hub's byte accounting that `bytes` of queued frames were written.
    pub fn written(&self, bytes: usize) {
        self.sub.mailbox.written(bytes);
    }

    async fn accept(&mut self, batch: std::collections::VecDeque<Arc<Frame>>) -> Result<Option<Item>, FeedError> {
        let mut out = Vec::with_capacity(batch.len());
        for f in batch {
            let len = f.json.len();
            if f.epoch.as_deref().is_some_and(|e| e != self.epoch) {
                // The session was lost and recreated under us: seqs restarted, so nothing
                // collected so far is comparable. Start over from a snapshot.
                self.written(len);
                return Ok(Some(Box::pin(self.resnapshot()).await?));
            }
            if f.seq <= self.last {
                self.written(len);
                continue;
            }
            if f.seq > self.last + 1 {
                // Lost on the way: fill from the log, which also covers `f`.
                self.written(len);
                match Box::pin(self.read_after()).await? {
                    Gap::Filled(mut frames) => out.append(&mut frames),
                    Gap::Snapshot(s) => {
                        // Drop what was collected: the snapshot supersedes it.
                        return Ok(Some(s));
                    }
                }
                continue;
            }
            self.last = f.seq;
            out.push(f);
        }
        Ok((!out.is_empty()).then_some(Item::Frames(out)))
    }

    async fn catch_up(&mut self) -> Result<Option<Item>, FeedError> {
        match self.read_after().await? {
            Gap::Filled(frames) if frames.is_empty() => Ok(None),
            Gap::Filled(frames) => Ok(Some(Item::Frames(frames))),
            Gap::Snapshot(s) => Ok(Some(s)),
        }
    }

    /// Reads the log after the last seq handed out, in its turn. Frames read this way are not in
    /// the hub's byte accounting.
    async fn read_after(&mut self) -> Result<Gap, FeedError> {
        let _turn = self.sub.log_read_turn().await?;
        let mut frames = Vec::new();
        loop {
            let read = self.store.read_log(&self.keys.base, self.last, CATCHUP_BATCH, &self.epoch).await?;
            match read {
                LogRead::Events(events) => {
                    let n = events.len() as u64;
                    for (seq, ev) in events {
                        self.last = seq;
                        frames.push(Frame::new(seq, ev.into()));
                    }
                    if n < CATCHUP_BATCH {
                        return Ok(Gap::Filled(frames));
                    }
                }
                LogRead::EpochChanged | LogRead::Trimmed => return Ok(Gap::Snapshot(self.snapshot_now().await?)),
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
        match self.store.open_session(&self.keys, &candidate, None, None, false).await? {
            Opened::Snapshot { epoch, seq, history, active_turn, partial, reason } => {
                self.epoch = epoch.clone();
                self.last = seq;
                Ok(Item::Snapshot(snapshot(epoch, seq, history, active_turn, partial, reason)))
            }
            Opened::Replay { .. } => unreachable!("open_session without last_seq always snapshots"),
        }
    }
}

enum Gap {
    Filled(Vec<Arc<Frame>>),
    Snapshot(Item),
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

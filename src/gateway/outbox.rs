//! What a connection writes next, for every transport: the session [`Feed`] with the rules that
//! used to be built once per transport. Shutdown (tell the client to reconnect), token expiry,
//! a slow consumer's overflow, a failed feed, the client's coalescing window, merging runs of
//! deltas, and the byte accounting of the connection's queue (a [`Batch`] is accounted for when
//! it is dropped) all live here. A transport only
//! encodes what [`Outbox::next`] yields and writes it, and ends the connection as an [`End`]
//! says (a WebSocket with its close code, an SSE stream by ending the body).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::error::{close, ApiError};
use super::feed::{merge_deltas, Feed, FeedError, Item};
use super::hub::{Frame, Mailbox};
use crate::auth::AuthError;
use crate::keys::SessionKeys;
use crate::metrics as m;
use crate::protocol::ControlMsg;

/// Why and how a connection ends.
#[derive(Debug)]
pub struct End {
    /// The last frame to send before closing, if any.
    pub last: Option<ControlMsg>,
    /// The WebSocket close code and reason.
    pub close: (u16, &'static str),
}

/// Events to write, in seq order, runs of deltas merged. Their bytes count against the
/// connection's queue bound until the batch is dropped, that is until the transport has written
/// it (or given up), so a write stuck on a client that stopped reading still counts.
pub struct Batch {
    pub frames: Vec<Arc<Frame>>,
    bytes: usize,
    mailbox: Arc<Mailbox>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("frames", &self.frames).field("bytes", &self.bytes).finish()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.mailbox.written(self.bytes);
    }
}

/// What a transport writes next.
#[derive(Debug)]
pub enum Out {
    /// Events, accounted for when the batch is dropped.
    Events(Batch),
    /// A control frame (a snapshot that replaces what the client holds).
    Control(ControlMsg),
    /// Send `last` (if any) and end the connection.
    End(End),
}

/// One connection's output.
pub struct Outbox {
    feed: Feed,
    shutdown: CancellationToken,
    /// When the client's token expires.
    expires_at: Option<Instant>,
    /// The client's coalescing window (zero: none).
    coalesce: Duration,
    /// Frames gathered in the open window, and when it closes. Kept here so that [`Outbox::next`]
    /// stays cancel-safe while a window is open.
    gathered: Vec<Arc<Frame>>,
    window_ends: Option<Instant>,
}

impl Outbox {
    pub fn new(feed: Feed, shutdown: CancellationToken, token_left: Option<Duration>, coalesce: Duration) -> Self {
        let expires_at = token_left.map(|d| Instant::now() + d);
        Self { feed, shutdown, expires_at, coalesce, gathered: Vec::new(), window_ends: None }
    }

    /// The session's keys.
    pub fn keys(&self) -> &SessionKeys {
        self.feed.keys()
    }

    /// The session epoch the frames handed out so far belong to.
    pub fn epoch(&self) -> &str {
        self.feed.epoch()
    }

    /// The opening's replay or snapshot, as output.
    pub fn first(&self, item: Item) -> Out {
        self.output(item)
    }

    /// Waits for what to write next. Cancel-safe: transports race it against client reads and
    /// pings; what it has taken from the feed stays in the outbox.
    pub async fn next(&mut self) -> Out {
        loop {
            if let Some(out) = self.step().await {
                return out;
            }
            let deadline = self.deadline();
            let timer = async move {
                match deadline {
                    Some(t) => sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {}
                _ = self.feed.mailbox().woken() => {}
                _ = timer => {}
            }
        }
    }

    /// What to write now, without waiting for new events: `None` when nothing is due before the
    /// mailbox wakes ([`Outbox::mailbox`]) or [`Outbox::deadline`] passes. A transport that waits
    /// for those itself (the WebSocket, sharing one timer with its pings) holds no more than that
    /// while idle. A log read that is due still waits for its turn and Redis. Cancel-safe.
    ///
    /// The hub wakes every mailbox when the gateway's shutdown token fires; `shutdown` must be
    /// that token.
    pub async fn step(&mut self) -> Option<Out> {
        if self.shutdown.is_cancelled() {
            let last = ControlMsg::Reconnect { reason: "draining".into() };
            return Some(Out::End(End { last: Some(last), close: (close::GOING_AWAY, "draining") }));
        }
        if self.expires_at.is_some_and(|t| t <= Instant::now()) {
            metrics::counter!(m::GATEWAY_POLICY_CLOSES, "reason" => "token_expired").increment(1);
            let last = ApiError::Unauthorized(AuthError::Expired).to_control();
            return Some(Out::End(End { last: Some(last), close: (close::TOKEN_EXPIRED, "token expired") }));
        }
        loop {
            match self.feed.try_next().await {
                Ok(None) => break,
                Ok(Some(Item::Frames(frames))) if !self.coalesce.is_zero() => {
                    if self.window_ends.is_none() {
                        self.window_ends = Some(Instant::now() + self.coalesce);
                    }
                    self.gathered.extend(frames);
                }
                // A snapshot supersedes what was gathered (the feed already moved past it).
                Ok(Some(item)) => {
                    self.window_ends = None;
                    let dropped: usize = self.gathered.drain(..).map(|f| f.json.len()).sum();
                    self.feed.written(dropped);
                    return Some(self.output(item));
                }
                Err(FeedError::Overflow) => return Some(Out::End(slow_consumer())),
                Err(FeedError::Store(e)) => {
                    tracing::error!(error = %e, "session feed failed");
                    let close = (close::UNAVAILABLE, "session feed failed; reconnect");
                    return Some(Out::End(End { last: None, close }));
                }
                Err(FeedError::Forbidden) => {
                    let close = (close::POLICY, "the session belongs to another user");
                    return Some(Out::End(End { last: None, close }));
                }
            }
        }
        if self.window_ends.is_some_and(|t| t <= Instant::now()) {
            self.window_ends = None;
            let frames = std::mem::take(&mut self.gathered);
            return Some(self.output(Item::Frames(frames)));
        }
        None
    }

    /// When [`Outbox::step`] has output even if nothing arrives: the token's expiry or the end
    /// of the open coalescing window, whichever comes first.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.expires_at, self.window_ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The connection's mailbox: its [`woken`](Mailbox::woken) says when [`Outbox::step`] may
    /// have output again.
    pub fn mailbox(&self) -> Arc<Mailbox> {
        self.feed.mailbox().clone()
    }

    /// Completes when the connection's queue overflowed while a write was stuck; the transport
    /// then stops writing and ends the connection with [`slow_consumer`].
    pub async fn overflowed(&self) {
        self.feed.overflowed().await
    }

    fn output(&self, item: Item) -> Out {
        match item {
            Item::Snapshot(s) => Out::Control(s),
            Item::Frames(frames) => {
                let bytes: usize = frames.iter().map(|f| f.json.len()).sum();
                let frames = if frames.len() > 1 { merge_deltas(frames) } else { frames };
                Out::Events(Batch { frames, bytes, mailbox: self.feed.mailbox().clone() })
            }
        }
    }
}

/// The end of a connection whose queue overflowed: it resumes from its last seq.
pub fn slow_consumer() -> End {
    metrics::counter!(m::GATEWAY_SLOW_CLOSES).increment(1);
    End { last: None, close: (close::SLOW_CONSUMER, "too slow; resume from your last seq") }
}

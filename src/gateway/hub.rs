//! The subscription hub: one sharded pub/sub connection per gateway, fanned out to the
//! connections of each session.
//!
//! - A connection [`Hub::join`]s a session channel and gets a [`Subscription`]: a bounded queue
//!   of decoded [`Frame`]s. `join` returns only after Redis confirmed the SSUBSCRIBE, so whatever
//!   the caller reads from the log afterwards overlaps the live feed and nothing falls between.
//! - One dispatcher task decodes each message once and offers it to every subscriber of the
//!   session without waiting: a full queue marks that connection as overflowed (it is closed as
//!   too slow); it never slows the others.
//! - Pub/sub is a hint, the log is the truth. After the subscriber connection comes back (and is
//!   resubscribed) or the broadcast buffer lagged, the hub marks every connection's [`Mailbox`]
//!   for a resync and wakes it, and the connection catches up from its session log. Those reads
//!   take turns (`gateway.max_concurrent_catchups` at once): a lag under overload would
//!   otherwise send every connection's read to Redis at the same moment and deepen the overload.
//! - A connection's queue is a [`Mailbox`]: one small allocation, no storage while idle. Its one
//!   `Notify` is the only thing an idle connection waits on for the hub: new frames, a resync,
//!   an overflow and the gateway's shutdown all wake it there.
//! - SSUBSCRIBE/SUNSUBSCRIBE go through one command task, so a leave and a join of the same
//!   channel can never reach Redis out of order (a leave queues its SUNSUBSCRIBE under the
//!   membership lock, and the task skips it if the channel has members again by then); commands
//!   waiting together are batched, up to [`BATCH`] channels in one SSUBSCRIBE (per slot on a
//!   Cluster, the slots' calls sent at once).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::protocol::{self, Event, EventBody};
use crate::store::{StoreError, Subscriber as PubSub};

/// Commands waiting for the command task; a full queue makes `join` wait (bounded).
const COMMAND_QUEUE: usize = 4096;
/// Most channels named in one SSUBSCRIBE.
const BATCH: usize = 512;

/// The hub's bounds (from `[gateway]`).
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Events queued for one connection before it counts as too slow.
    pub queue_events: usize,
    /// Bytes queued for one connection before it counts as too slow.
    pub queue_bytes: usize,
    /// Session-log reads (catch-ups, gap fills) running at once.
    pub log_reads: usize,
    /// How long a join waits for its SSUBSCRIBE to be confirmed, across a reconnect of the
    /// subscriber connection (`redis.command_timeout_ms + redis.reconnect_max_delay_ms`).
    pub subscribe_timeout: Duration,
    /// On a Cluster, how often the slot map is checked (`gateway.cluster_check_ms`): a slot that
    /// moved (resharding, failover) drops its subscriptions without any other sign.
    pub cluster_check: Duration,
}

/// One event, decoded once per gateway and shared by all its connections.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    /// The session epoch of a live frame; `None` for frames read from the log, whose epoch the
    /// read itself checked.
    pub epoch: Option<String>,
    pub body: EventBody,
    /// The event's JSON, as sent to clients.
    pub json: Utf8Bytes,
}

impl Frame {
    pub fn new(seq: u64, body: EventBody) -> Arc<Self> {
        let json = protocol::encode(&Event { seq, first_seq: None, body: body.clone() }).into();
        Arc::new(Self { seq, epoch: None, body, json })
    }

    fn live(seq: u64, body: EventBody, epoch: String) -> Arc<Self> {
        let json = protocol::encode(&Event { seq, first_seq: None, body: body.clone() }).into();
        Arc::new(Self { seq, epoch: Some(epoch), body, json })
    }
}

/// One connection's queue, shared by the dispatcher (which pushes) and the connection (which
/// drains it). One allocation per connection: an idle connection holds no queued storage, since
/// the queue is taken whole by each drain and its storage is allocated by the next push.
pub struct Mailbox {
    frames: Mutex<VecDeque<Arc<Frame>>>,
    /// Bytes queued and not yet written by the connection.
    queued: AtomicUsize,
    /// Set when the queue passed its bound: the connection is too slow.
    overflowed: AtomicBool,
    /// Set by a hub resync: the connection must catch up from its log.
    resync: AtomicBool,
    /// Wakes the connection for new frames, a resync and shutdown (one stored permit, so a
    /// wake-up between a look that found nothing and the wait is kept), and on overflow (every
    /// waiter as well: a write stuck on a slow client waits for it).
    wake: Notify,
}

impl Mailbox {
    fn new() -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            resync: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Takes every queued frame, oldest first, without waiting (empty when there are none). The
    /// queue's storage goes with them, so an idle connection holds none.
    pub fn take_now(&self) -> VecDeque<Arc<Frame>> {
        std::mem::take(&mut *self.frames.lock().expect("mailbox lock"))
    }

    /// Takes every queued frame, oldest first; waits while there are none. Ends with
    /// [`Overflowed`] once the queue passed its bound.
    #[cfg(test)]
    pub async fn take(&self) -> Result<VecDeque<Arc<Frame>>, Overflowed> {
        loop {
            if self.is_overflowed() {
                return Err(Overflowed);
            }
            let frames = self.take_now();
            if !frames.is_empty() {
                return Ok(frames);
            }
            self.woken().await;
        }
    }

    /// Completes at the next wake-up: frames were queued, the queue overflowed, a resync was
    /// requested or the gateway shuts down. It may complete with nothing new (a wake-up already
    /// looked at), so the caller looks again; a wake-up that came after its last look is never
    /// lost (the `Notify` keeps it).
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Whether a resync was requested since the last call; clears the request.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    fn request_resync(&self) {
        self.resync.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Completes once the queue passed its bound.
    pub async fn overflowed(&self) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.overflowed.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    /// Whether the queue passed its bound.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Tells the byte accounting that `bytes` of queued frames were written (or dropped).
    pub fn written(&self, bytes: usize) {
        // Saturating: frames read from the log were never counted.
        let _ = self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
    }

    fn push(&self, frame: Arc<Frame>, max_events: usize, max_bytes: usize) {
        if self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let len = frame.json.len();
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        let fits = queued <= max_bytes && {
            let mut frames = self.frames.lock().expect("mailbox lock");
            frames.len() < max_events && {
                frames.push_back(frame);
                true
            }
        };
        if fits {
            self.wake.notify_one();
        } else {
            self.overflowed.store(true, Ordering::Release);
            // Every waiter: the connection may wait both for frames and, mid-write, for this.
            self.wake.notify_waiters();
            self.wake.notify_one();
        }
    }
}

/// The connection's queue passed its bound.
#[derive(Debug)]
pub struct Overflowed;

struct Subscriber {
    id: u64,
    mailbox: Arc<Mailbox>,
}

enum Command {
    Subscribe(String, oneshot::Sender<Result<(), StoreError>>),
    Unsubscribe(String),
    /// After a reconnect: subscribe again to every channel that has members.
    Resubscribe(oneshot::Sender<Result<(), StoreError>>),
}

struct Inner {
    /// Members per channel. The name is shared with each member's [`Subscription`], so a
    /// connection costs one copy of it, not two.
    channels: Mutex<HashMap<Arc<str>, Vec<Subscriber>>>,
    next_id: AtomicU64,
    commands: mpsc::Sender<Command>,
    queue_events: usize,
    queue_bytes: usize,
    /// Log reads (catch-ups and gap fills) running at once on this gateway.
    log_reads: Arc<Semaphore>,
    subscribe_timeout: Duration,
}

/// The hub of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A connection's membership of a session channel. Leaves on drop.
pub struct Subscription {
    hub: Hub,
    channel: Arc<str>,
    id: u64,
    /// The frames queued for this connection, and its resync flag.
    pub mailbox: Arc<Mailbox>,
}

impl Hub {
    /// Starts the hub's tasks on `sub` (a connected subscriber client). They stop with `shutdown`.
    pub fn start(sub: PubSub, limits: HubLimits, shutdown: CancellationToken) -> Self {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let hub = Hub {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                commands,
                queue_events: limits.queue_events,
                queue_bytes: limits.queue_bytes,
                log_reads: Arc::new(Semaphore::new(limits.log_reads.max(1))),
                subscribe_timeout: limits.subscribe_timeout,
            }),
        };
        tokio::spawn(run_commands(hub.clone(), sub.clone(), command_rx, shutdown.clone()));
        tokio::spawn(dispatch(hub.clone(), sub.clone(), shutdown.clone()));
        tokio::spawn(watch_reconnects(hub.clone(), sub, limits.cluster_check, shutdown));
        hub
    }

    /// Joins a session channel; returns once Redis confirmed the subscription.
    pub async fn join(&self, channel: &str) -> Result<Subscription, StoreError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::new());
        let name = {
            let mut map = self.inner.channels.lock().expect("hub lock");
            let name = match map.get_key_value(channel) {
                Some((name, _)) => name.clone(),
                None => Arc::from(channel),
            };
            // Most sessions have one connection: room for exactly one member at first.
            let members = map.entry(name.clone()).or_insert_with(|| Vec::with_capacity(1));
            members.push(Subscriber { id, mailbox: mailbox.clone() });
            name
        };
        // Register first, then subscribe: an event published after the SSUBSCRIBE is delivered.
        let subscription = Subscription { hub: self.clone(), channel: name, id, mailbox };
        // Every join waits for a confirmed SSUBSCRIBE, even when the channel already had
        // members: the first member's subscribe may still be in flight.
        // If the connection drops under the SSUBSCRIBE, the reconnect's resubscription (which
        // covers this member, already in the map) confirms it instead: a pub/sub connection lost
        // at the wrong moment delays a join, it does not fail it.
        let (done, confirmed) = oneshot::channel();
        self.inner.commands.send(Command::Subscribe(channel.to_string(), done)).await.map_err(|_| closed())?;
        match tokio::time::timeout(self.inner.subscribe_timeout, confirmed).await {
            Ok(r) => r.map_err(|_| closed())??,
            Err(_) => return Err(store_error("SSUBSCRIBE not confirmed in time".into())),
        }
        Ok(subscription)
    }

    fn leave(&self, channel: &str, id: u64) {
        let mut map = self.inner.channels.lock().expect("hub lock");
        let Some(subs) = map.get_mut(channel) else { return };
        subs.retain(|s| s.id != id);
        if subs.is_empty() {
            map.remove(channel);
            // Queued while the lock is held: a join that follows takes the lock after this, so
            // its Subscribe is queued after this Unsubscribe and Redis sees them in that order.
            // Best effort: if the queue is full the channel stays subscribed until the next
            // reconnect; its messages then find no member and are dropped cheaply.
            let _ = self.inner.commands.try_send(Command::Unsubscribe(channel.to_string()));
        }
    }

    /// Number of channels with members on this gateway.
    pub fn channels(&self) -> usize {
        self.inner.channels.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Waits for a turn to read a session log (a catch-up or a gap fill): a bounded number run
    /// at once (`gateway.max_concurrent_catchups`), so a resync of every connection does not
    /// send all their reads to Redis together. Fair: connections are served in arrival order.
    pub async fn log_read_turn(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed; `None` would only mean the hub is gone.
        self.inner.log_reads.clone().acquire_owned().await.ok()
    }

    /// Marks every member for a catch-up from its log and wakes it. A flag per mailbox rather
    /// than a shared `watch`: an idle connection then waits on its mailbox alone.
    fn request_resync(&self, cause: &'static str) {
        metrics::counter!(crate::metrics::GATEWAY_CATCHUPS, "cause" => cause).increment(1);
        let map = self.inner.channels.lock().expect("hub lock");
        map.values().flatten().for_each(|s| s.mailbox.request_resync());
    }

    /// Wakes every member (the gateway shuts down; each connection sees the token cancelled when
    /// it looks). A member that joins afterwards sees the token before it first waits.
    fn wake_all(&self) {
        let map = self.inner.channels.lock().expect("hub lock");
        map.values().flatten().for_each(|s| s.mailbox.wake.notify_one());
    }

    fn deliver(&self, channel: &str, frame: Arc<Frame>) {
        let map = self.inner.channels.lock().expect("hub lock");
        let Some(subs) = map.get(channel) else { return };
        for s in subs {
            s.mailbox.push(frame.clone(), self.inner.queue_events, self.inner.queue_bytes);
        }
    }

    fn has_members(&self, channel: &str) -> bool {
        self.inner.channels.lock().map(|m| m.contains_key(channel)).unwrap_or(false)
    }
}

impl Subscription {
    /// Waits for this connection's turn to read its session log (see [`Hub::log_read_turn`]);
    /// gives up if the connection overflows meanwhile, since it is then closed anyway.
    pub async fn log_read_turn(&self) -> Result<Option<OwnedSemaphorePermit>, Overflowed> {
        tokio::select! {
            biased;
            _ = self.mailbox.overflowed() => Err(Overflowed),
            permit = self.hub.log_read_turn() => Ok(permit),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(&self.channel, self.id);
    }
}

fn closed() -> StoreError {
    StoreError::canceled("hub stopped")
}

/// Applies subscribe/unsubscribe commands in order, batching those that wait together.
async fn run_commands(hub: Hub, sub: PubSub, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    // Joins whose SSUBSCRIBE failed (the connection dropped under it): the next resubscription
    // answers them. A join gives up on its own after `subscribe_timeout`.
    let mut parked: Vec<Waiter> = Vec::new();
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = shutdown.cancelled() => break,
        };
        if n == 0 {
            break;
        }
        let mut subscribe: Vec<String> = Vec::new();
        let mut waiters = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Subscribe(ch, done) => {
                    subscribe.push(ch);
                    waiters.push(done);
                }
                Command::Unsubscribe(ch) => {
                    // Flush pending subscribes first, keeping the order Redis sees.
                    if !subscribe.is_empty() {
                        let r = ssubscribe_grouped(&sub, std::mem::take(&mut subscribe)).await;
                        answer_or_park(std::mem::take(&mut waiters), r, &mut parked);
                    }
                    // A member joined since the last one left: its Subscribe is queued after
                    // this, or was just sent; unsubscribing now would leave it with nothing.
                    if hub.has_members(&ch) {
                        continue;
                    }
                    if let Err(e) = sub.sunsubscribe(ch).await {
                        tracing::warn!(error = %e, "SUNSUBSCRIBE failed");
                    }
                }
                Command::Resubscribe(done) => {
                    // Our membership map is the truth, not the client's tracked set: a channel
                    // whose last member left while the connection was down stays unsubscribed.
                    let wanted: Vec<String> = hub
                        .inner
                        .channels
                        .lock()
                        .map(|m| m.keys().map(|k| k.to_string()).collect())
                        .unwrap_or_default();
                    subscribe.extend(wanted);
                    let r = ssubscribe_grouped(&sub, std::mem::take(&mut subscribe)).await;
                    // A resubscription that failed too (the connection dropped again) leaves
                    // them parked for the one after the next reconnect.
                    waiters.append(&mut parked);
                    answer_or_park(std::mem::take(&mut waiters), r.clone(), &mut parked);
                    let _ = done.send(r.map_err(store_error));
                }
            }
        }
        if !subscribe.is_empty() {
            let r = ssubscribe_grouped(&sub, subscribe).await;
            answer_or_park(waiters, r, &mut parked);
        }
        // Joins that gave up meanwhile are dropped, so the list stays as small as the joins
        // actually waiting.
        parked.retain(|w| !w.is_closed());
    }
}

/// SSUBSCRIBE for a batch, by slot (see [`PubSub::ssubscribe_by_slot`]); the error as text, since
/// one result answers many joins.
async fn ssubscribe_grouped(sub: &PubSub, channels: Vec<String>) -> Result<(), String> {
    sub.ssubscribe_by_slot(channels).await.map_err(|e| e.to_string())
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// Confirms the joins of a successful SSUBSCRIBE; parks them until the resubscription after the
/// reconnect when it failed.
fn answer_or_park(waiters: Vec<Waiter>, r: Result<(), String>, parked: &mut Vec<Waiter>) {
    match r {
        Ok(()) => answer(waiters, Ok(())),
        Err(e) => {
            tracing::warn!(error = %e, joins = waiters.len(), "SSUBSCRIBE failed; the joins wait for the resubscription");
            parked.extend(waiters);
        }
    }
}

fn answer(waiters: Vec<Waiter>, r: Result<(), String>) {
    for w in waiters {
        let _ = w.send(r.clone().map_err(store_error));
    }
}

fn store_error(e: String) -> StoreError {
    StoreError::other(e)
}

/// Decodes each message once and offers it to the channel's members.
async fn dispatch(hub: Hub, sub: PubSub, shutdown: CancellationToken) {
    let mut rx = sub.messages();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.cancelled() => {
                // Connections wait on their mailbox alone, not on the token.
                hub.wake_all();
                return;
            }
        };
        let msg = match msg {
            Ok(m) => m,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(lost = n, "pub/sub receiver lagged; connections catch up from logs");
                hub.request_resync("lagged");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let channel: &str = &msg.channel;
        if !hub.has_members(channel) {
            continue;
        }
        let Some(bytes) = msg.value.as_bytes() else { continue };
        match payload::decode_published(bytes) {
            Ok(p) => hub.deliver(channel, Frame::live(p.seq, p.event.into(), p.epoch)),
            Err(e) => tracing::error!(%channel, error = %e, "undecodable event on channel"),
        }
    }
}

/// After the subscriber connection comes back, or a slot moved to another node: resubscribe
/// everything, then make every connection catch up from its log (what was published in between
/// was lost).
///
/// A slot that moves (resharding, a failover) drops its subscriptions on the node it left, and
/// the client library discards that notice. So on a Cluster the slot map is read every
/// `cluster_check` and compared with the last one; the library announces every read as a
/// topology change, so only a map that differs counts.
async fn watch_reconnects(hub: Hub, sub: PubSub, check: Duration, shutdown: CancellationToken) {
    let mut rx = sub.reconnects();
    let mut topology = sub.topology_changes();
    let clustered = sub.is_clustered();
    let mut known = sub.slot_map();
    let mut tick = tokio::time::interval(check.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            r = rx.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => "reconnect",
                Err(RecvError::Closed) => break,
            },
            t = topology.recv() => match t {
                Ok(_) | Err(RecvError::Lagged(_)) => "topology",
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick(), if clustered => {
                // Bounded: a node that does not answer is the reconnect logic's business.
                if let Ok(Err(e)) = tokio::time::timeout(check, sub.sync_cluster()).await {
                    tracing::debug!(error = %e, "reading the cluster's slot map failed");
                }
                "topology"
            }
            _ = shutdown.cancelled() => break,
        };
        let now = sub.slot_map();
        if cause == "topology" && now == known {
            continue;
        }
        known = now;
        // Before anything arrives on the new subscription: a connection must judge what the
        // log holds (Redis may have lost writes it saw) before it takes new live frames, or a
        // frame that reuses a lost seq would pass for one it already has.
        hub.request_resync(cause);
        let (done, resubscribed) = oneshot::channel();
        if hub.inner.commands.send(Command::Resubscribe(done)).await.is_err() {
            break;
        }
        match resubscribed.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, cause, "resubscribe failed"),
            Err(_) => break,
        }
        // Whatever was published while the subscription was gone is in the logs.
        hub.request_resync(cause);
    }
    sub.quit().await;
}

#[cfg(test)]
mod tests;

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
//!   resubscribed) or the broadcast buffer lagged, the hub bumps a resync generation and every
//!   connection catches up from its session log.
//! - SSUBSCRIBE/SUNSUBSCRIBE go through one command task, so a leave and a join of the same
//!   channel can never reach Redis out of order; commands waiting together are batched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::protocol::{self, Event, EventBody};
use crate::store::StoreError;

/// Commands waiting for the command task; a full queue makes `join` wait (bounded).
const COMMAND_QUEUE: usize = 4096;
/// Most channels named in one SSUBSCRIBE.
const BATCH: usize = 512;

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

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<Frame>>,
    /// Bytes queued and not yet written by the connection.
    queued: Arc<AtomicUsize>,
    overflow: CancellationToken,
}

enum Command {
    Subscribe(String, oneshot::Sender<Result<(), StoreError>>),
    Unsubscribe(String),
    /// After a reconnect: subscribe again to every channel that has members.
    Resubscribe(oneshot::Sender<Result<(), StoreError>>),
}

struct Inner {
    channels: Mutex<HashMap<String, Vec<Subscriber>>>,
    next_id: AtomicU64,
    commands: mpsc::Sender<Command>,
    resync: watch::Sender<u64>,
    queue_events: usize,
    queue_bytes: usize,
}

/// The hub of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A connection's membership of a session channel. Leaves on drop.
pub struct Subscription {
    hub: Hub,
    channel: String,
    id: u64,
    pub rx: mpsc::Receiver<Arc<Frame>>,
    /// Bytes queued for this connection; the writer subtracts what it wrote.
    pub queued: Arc<AtomicUsize>,
    /// Fired when the queue passed its bound: the connection is too slow.
    pub overflow: CancellationToken,
    /// Changes when every connection must catch up from the log.
    pub resync: watch::Receiver<u64>,
}

impl Hub {
    /// Starts the hub's tasks on `sub` (a connected subscriber client). They stop with `shutdown`.
    pub fn start(sub: SubscriberClient, queue_events: usize, queue_bytes: usize, shutdown: CancellationToken) -> Self {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (resync, _) = watch::channel(0);
        let hub = Hub {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                commands,
                resync,
                queue_events,
                queue_bytes,
            }),
        };
        tokio::spawn(run_commands(hub.clone(), sub.clone(), command_rx, shutdown.clone()));
        tokio::spawn(dispatch(hub.clone(), sub.clone(), shutdown.clone()));
        tokio::spawn(watch_reconnects(hub.clone(), sub, shutdown));
        hub
    }

    /// Joins a session channel; returns once Redis confirmed the subscription.
    pub async fn join(&self, channel: &str) -> Result<Subscription, StoreError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.queue_events);
        let queued = Arc::new(AtomicUsize::new(0));
        let overflow = CancellationToken::new();
        {
            let mut map = self.inner.channels.lock().expect("hub lock");
            map.entry(channel.to_string()).or_default().push(Subscriber {
                id,
                tx,
                queued: queued.clone(),
                overflow: overflow.clone(),
            });
        }
        // Register first, then subscribe: an event published after the SSUBSCRIBE is delivered.
        let subscription = Subscription {
            hub: self.clone(),
            channel: channel.to_string(),
            id,
            rx,
            queued,
            overflow,
            resync: self.inner.resync.subscribe(),
        };
        // Every join waits for a confirmed SSUBSCRIBE, even when the channel already had
        // members: the first member's subscribe may still be in flight.
        let (done, confirmed) = oneshot::channel();
        self.inner.commands.send(Command::Subscribe(channel.to_string(), done)).await.map_err(|_| closed())?;
        confirmed.await.map_err(|_| closed())??;
        Ok(subscription)
    }

    fn leave(&self, channel: &str, id: u64) {
        let empty = {
            let mut map = self.inner.channels.lock().expect("hub lock");
            let Some(subs) = map.get_mut(channel) else { return };
            subs.retain(|s| s.id != id);
            let empty = subs.is_empty();
            if empty {
                map.remove(channel);
            }
            empty
        };
        if empty {
            // Best effort: if the queue is full the channel stays subscribed until the next
            // reconnect; its messages then find no member and are dropped cheaply.
            let _ = self.inner.commands.try_send(Command::Unsubscribe(channel.to_string()));
        }
    }

    /// Number of channels with members on this gateway.
    pub fn channels(&self) -> usize {
        self.inner.channels.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn request_resync(&self, cause: &'static str) {
        metrics::counter!(crate::metrics::GATEWAY_CATCHUPS, "cause" => cause).increment(1);
        self.inner.resync.send_modify(|g| *g += 1);
    }

    fn deliver(&self, channel: &str, frame: Arc<Frame>) {
        let map = self.inner.channels.lock().expect("hub lock");
        let Some(subs) = map.get(channel) else { return };
        let len = frame.json.len();
        for s in subs {
            let queued = s.queued.fetch_add(len, Ordering::Relaxed) + len;
            if queued > self.inner.queue_bytes || s.tx.try_send(frame.clone()).is_err() {
                s.overflow.cancel();
            }
        }
    }

    fn has_members(&self, channel: &str) -> bool {
        self.inner.channels.lock().map(|m| m.contains_key(channel)).unwrap_or(false)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(&self.channel, self.id);
    }
}

fn closed() -> StoreError {
    StoreError::Redis(fred::error::Error::new(fred::error::ErrorKind::Canceled, "hub stopped"))
}

/// Applies subscribe/unsubscribe commands in order, batching those that wait together.
async fn run_commands(hub: Hub, sub: SubscriberClient, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
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
                        answer(std::mem::take(&mut waiters), r);
                    }
                    if let Err(e) = sub.sunsubscribe(ch).await {
                        tracing::warn!(error = %e, "SUNSUBSCRIBE failed");
                    }
                }
                Command::Resubscribe(done) => {
                    // Our membership map is the truth, not the client's tracked set: a channel
                    // whose last member left while the connection was down stays unsubscribed.
                    let wanted: Vec<String> =
                        hub.inner.channels.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                    subscribe.extend(wanted);
                    let r = ssubscribe_grouped(&sub, std::mem::take(&mut subscribe)).await;
                    answer(std::mem::take(&mut waiters), r.clone());
                    let _ = done.send(r.map_err(store_error));
                }
            }
        }
        if !subscribe.is_empty() {
            let r = ssubscribe_grouped(&sub, subscribe).await;
            answer(waiters, r);
        }
    }
}

/// SSUBSCRIBE, one call per hash slot: a Cluster refuses channels of several slots in one call.
/// (fred's `resubscribe_all` is not used: in 10.1 it first sends SUBSCRIBE with no channels,
/// which Redis refuses, and then never reaches the sharded channels.)
async fn ssubscribe_grouped(sub: &SubscriberClient, channels: Vec<String>) -> Result<(), String> {
    if channels.is_empty() {
        return Ok(());
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for ch in channels {
        by_slot.entry(fred::util::redis_keyslot(ch.as_bytes())).or_default().push(ch);
    }
    for (_, chs) in by_slot {
        sub.ssubscribe(chs).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn answer(waiters: Vec<oneshot::Sender<Result<(), StoreError>>>, r: Result<(), String>) {
    for w in waiters {
        let _ = w.send(r.clone().map_err(store_error));
    }
}

fn store_error(e: String) -> StoreError {
    StoreError::Redis(fred::error::Error::new(fred::error::ErrorKind::Unknown, e))
}

/// Decodes each message once and offers it to the channel's members.
async fn dispatch(hub: Hub, sub: SubscriberClient, shutdown: CancellationToken) {
    let mut rx = sub.message_rx();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.cancelled() => return,
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

/// After the subscriber connection comes back, or the cluster's topology changed: resubscribe
/// everything, then make every connection catch up from its log (what was published in between
/// was lost).
async fn watch_reconnects(hub: Hub, sub: SubscriberClient, shutdown: CancellationToken) {
    let mut rx = sub.reconnect_rx();
    // In Cluster, a failover or resharding moves slots: Redis drops those subscriptions.
    let mut topology = sub.cluster_change_rx();
    loop {
        let r = tokio::select! {
            r = rx.recv() => r.map(|_| ()),
            t = topology.recv() => t.map(|_| ()),
            _ = shutdown.cancelled() => break,
        };
        match r {
            Ok(()) | Err(RecvError::Lagged(_)) => {
                let (done, resubscribed) = oneshot::channel();
                if hub.inner.commands.send(Command::Resubscribe(done)).await.is_err() {
                    break;
                }
                match resubscribed.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "resubscribe after reconnect failed"),
                    Err(_) => break,
                }
                // Whatever was published while the connection was down is in the logs.
                hub.request_resync("reconnect");
            }
            Err(RecvError::Closed) => break,
        }
    }
    let _ = sub.quit().await;
}

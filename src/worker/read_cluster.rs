//! The reader in Redis Cluster: wake-ups per partition instead of one blocking read.
//!
//! One XREADGROUP cannot span slots, and a blocking read per partition would take P connections
//! per worker. Instead `enqueue_turn` publishes on the partition's wake channel (same slot); the
//! worker, subscribed to every partition's channel, reads that partition without blocking. Claim
//! latency is one publish plus one read, whatever P is. Every `read_block_ms` all partitions are
//! read anyway, which covers wake-ups lost while the subscriber reconnected and turns left
//! waiting while the worker was full.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{Delivery, Shared};
use crate::keys::{Keyspace, GROUP};
use crate::settings::ms;

pub(super) async fn run(shared: Arc<Shared>, sub: SubscriberClient, stop: CancellationToken) {
    let keys = shared.store.keys().clone();
    let partitions = keys.partitions();
    let channels: Vec<String> = (0..partitions).map(|p| keys.wake_channel(p)).collect();
    subscribe(&sub, &channels).await;
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    let mut topology = sub.cluster_change_rx();
    let mut poll = tokio::time::interval(ms(shared.settings.worker.read_block_ms));
    let mut ready = Ready::new(partitions);
    let batch = (shared.settings.worker.max_concurrent_turns / 4).max(1) as u64;
    loop {
        // Read ready partitions while there is room for their turns.
        while shared.permits.available_permits() > 0 {
            let Some(p) = ready.pop() else { break };
            let count = (shared.permits.available_permits() as u64).min(batch);
            let got = read_partition(&shared, &keys, p, count, &stop).await;
            if got as u64 == count {
                ready.mark(p); // there may be more
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            m = messages.recv() => match m {
                Ok(msg) => {
                    if let Some(p) = Keyspace::partition_in(&msg.channel) {
                        ready.mark(p);
                    }
                }
                Err(RecvError::Lagged(_)) => ready.mark_all(),
                Err(RecvError::Closed) => break,
            },
            _ = reconnects.recv() => {
                subscribe(&sub, &channels).await;
                ready.mark_all();
            }
            _ = topology.recv() => {
                subscribe(&sub, &channels).await;
                ready.mark_all();
            }
            _ = poll.tick() => ready.mark_all(),
            // Full with partitions waiting: resume when a turn ends.
            p = shared.permits.clone().acquire_owned(), if !ready.is_empty() => drop(p),
        }
    }
    let _ = sub.quit().await;
}

/// Partitions to read, each queued at most once.
struct Ready {
    queue: VecDeque<u16>,
    queued: Vec<bool>,
}

impl Ready {
    fn new(partitions: u16) -> Self {
        Self { queue: VecDeque::new(), queued: vec![false; partitions as usize] }
    }

    fn mark(&mut self, p: u16) {
        if let Some(q) = self.queued.get_mut(p as usize) {
            if !std::mem::replace(q, true) {
                self.queue.push_back(p);
            }
        }
    }

    fn mark_all(&mut self) {
        (0..self.queued.len() as u16).for_each(|p| self.mark(p));
    }

    fn pop(&mut self) -> Option<u16> {
        let p = self.queue.pop_front()?;
        self.queued[p as usize] = false;
        Some(p)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// SSUBSCRIBE to every wake channel, one call per slot (a call may not span slots).
async fn subscribe(sub: &SubscriberClient, channels: &[String]) {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for ch in channels {
        by_slot.entry(fred::util::redis_keyslot(ch.as_bytes())).or_default().push(ch.clone());
    }
    for (_, chs) in by_slot {
        if let Err(e) = sub.ssubscribe(chs).await {
            tracing::warn!(error = %e, "wake channel subscribe failed; the periodic read covers it");
        }
    }
}

/// Reads up to `count` new turns of partition `p` without blocking; returns how many it got.
async fn read_partition(shared: &Arc<Shared>, keys: &Keyspace, p: u16, count: u64, stop: &CancellationToken) -> usize {
    let stream = keys.stream(p);
    let client = shared.store.redis().client();
    let reply =
        client.xreadgroup::<Value, _, _, _, _>(GROUP, shared.id.as_str(), Some(count), None, false, &stream, ">").await;
    let value = match reply {
        Ok(v) if v.is_null() => return 0,
        Ok(v) => v,
        Err(e) => {
            if e.details().contains("NOGROUP") {
                let _ = shared.store.ensure_schema().await;
            } else {
                tracing::warn!(partition = p, error = %e, "XREADGROUP failed");
            }
            return 0;
        }
    };
    let Ok(entries) = value.into_xread_response::<String, String, String, String>() else { return 0 };
    let mut n = 0;
    for (_, items) in entries {
        for (entry_id, mut fields) in items {
            n += 1;
            let (Some(base), Some(turn_id)) = (fields.remove("b"), fields.remove("t")) else { continue };
            let traceparent = fields.remove("tp");
            let d = Delivery { partition: p, entry_id, base, turn_id, traceparent };
            if !shared.dispatch(d, stop).await {
                return n;
            }
        }
    }
    n
}

//! The reader in Redis Cluster: wake-ups per partition instead of one blocking read.
//!
//! One XREADGROUP cannot span slots, and a blocking read per partition would take P connections
//! per worker. Instead `enqueue_turn` publishes on the partition's wake channel (same slot); the
//! worker, subscribed to every partition's channel, reads that partition without blocking. Claim
//! latency is one publish plus one read, whatever P is. Every `read_block_ms` all partitions are
//! read anyway, which covers wake-ups lost while the subscriber reconnected and turns left
//! waiting while the worker was full.
//!
//! That periodic pass is P reads in a row, so a woken partition must not queue behind it: woken
//! partitions are read first, and wake-ups that arrive between two reads are taken in before the
//! next one. Otherwise a wake-up waits for the rest of the pass, which at P = 512 put tens of
//! milliseconds on the claim latency p99 every `read_block_ms`.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::keys::Keyspace;
use crate::settings_base::ms;
use crate::store::{Message, Subscriber};

pub(super) async fn run(shared: Arc<Shared>, sub: Subscriber, stop: CancellationToken) {
    let keys = shared.store.keys().clone();
    let partitions = keys.partitions();
    let channels: Vec<String> = (0..partitions).map(|p| keys.wake_channel(p)).collect();
    subscribe(&sub, &channels).await;
    let mut messages = sub.messages();
    let mut reconnects = sub.reconnects();
    let mut topology = sub.topology_changes();
    let mut poll = tokio::time::interval(ms(shared.settings.worker.read_block_ms));
    let mut ready = Ready::new(partitions);
    let batch = (shared.settings.worker.max_concurrent_turns / 4).max(1) as u64;
    loop {
        // Read ready partitions while there is room for their turns, taking in the wake-ups that
        // arrived during the last read first, so they go ahead of a periodic pass.
        while shared.permits.available_permits() > 0 {
            if !take_wakeups(&mut messages, &mut ready) {
                break;
            }
            let Some(p) = ready.pop() else { break };
            let count = (shared.permits.available_permits() as u64).min(batch);
            let got = read_partition(&shared, p, count, &stop).await;
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
    sub.quit().await;
}

/// Woken partitions read in a row before one partition of a periodic pass gets its turn, so a
/// busy worker still finishes the pass (it is what finds turns whose wake-up was lost).
const WOKEN_PER_POLLED: u32 = 16;

/// Where a partition is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    No,
    /// By a wake-up (or a read that may have left more): read before any `Polled`.
    Woken,
    /// By a periodic pass, a reconnect or a topology change.
    Polled,
}

/// Partitions to read, each queued at most once, woken ones ahead of polled ones.
struct Ready {
    woken: VecDeque<u16>,
    /// May hold partitions since woken; those are skipped (their state is no longer `Polled`).
    polled: VecDeque<u16>,
    state: Vec<Queued>,
    polled_count: usize,
    woken_in_a_row: u32,
}

impl Ready {
    fn new(partitions: u16) -> Self {
        Self {
            woken: VecDeque::new(),
            polled: VecDeque::new(),
            state: vec![Queued::No; partitions as usize],
            polled_count: 0,
            woken_in_a_row: 0,
        }
    }

    /// Partition `p` has (or may have) new turns: read it next.
    fn mark(&mut self, p: u16) {
        let Some(s) = self.state.get_mut(p as usize) else { return };
        match *s {
            Queued::Woken => {}
            Queued::Polled => {
                self.polled_count -= 1;
                *s = Queued::Woken;
                self.woken.push_back(p);
            }
            Queued::No => {
                *s = Queued::Woken;
                self.woken.push_back(p);
            }
        }
    }

    /// Every partition not queued yet, behind the woken ones.
    fn mark_all(&mut self) {
        for (p, s) in self.state.iter_mut().enumerate() {
            if *s == Queued::No {
                *s = Queued::Polled;
                self.polled_count += 1;
                self.polled.push_back(p as u16);
            }
        }
    }

    fn pop(&mut self) -> Option<u16> {
        if self.woken_in_a_row < WOKEN_PER_POLLED || self.polled_count == 0 {
            if let Some(p) = self.woken.pop_front() {
                self.woken_in_a_row += 1;
                self.state[p as usize] = Queued::No;
                return Some(p);
            }
        }
        self.woken_in_a_row = 0;
        while let Some(p) = self.polled.pop_front() {
            if self.state[p as usize] == Queued::Polled {
                self.state[p as usize] = Queued::No;
                self.polled_count -= 1;
                return Some(p);
            }
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.woken.is_empty() && self.polled_count == 0
    }
}

/// Takes in the wake-ups already received, without waiting. False once the channel is closed.
fn take_wakeups(messages: &mut Receiver<Message>, ready: &mut Ready) -> bool {
    loop {
        match messages.try_recv() {
            Ok(msg) => {
                if let Some(p) = Keyspace::partition_in(&msg.channel) {
                    ready.mark(p);
                }
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Lagged(_)) => ready.mark_all(),
            Err(TryRecvError::Closed) => return false,
        }
    }
}

/// SSUBSCRIBE to every wake channel (one call per slot: a call may not span slots).
async fn subscribe(sub: &Subscriber, channels: &[String]) {
    if let Err(e) = sub.ssubscribe_by_slot(channels.to_vec()).await {
        tracing::warn!(error = %e, "wake channel subscribe failed; the periodic read covers it");
    }
}

/// Reads up to `count` new turns of partition `p` without blocking; returns how many it got.
async fn read_partition(shared: &Arc<Shared>, p: u16, count: u64, stop: &CancellationToken) -> usize {
    let deliveries = match shared.store.read_partition(p, &shared.id, count).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "XREADGROUP failed");
            return 0;
        }
    };
    let n = deliveries.len();
    for d in deliveries {
        if !shared.dispatch(d, stop).await {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Ready) -> Vec<u16> {
        std::iter::from_fn(|| r.pop()).collect()
    }

    #[test]
    fn woken_partitions_go_ahead_of_a_periodic_pass() {
        let mut r = Ready::new(4);
        r.mark_all();
        r.mark(2);
        assert_eq!(drain(&mut r), vec![2, 0, 1, 3]);
        assert!(r.is_empty());
    }

    #[test]
    fn each_partition_is_queued_once() {
        let mut r = Ready::new(3);
        r.mark(1);
        r.mark(1);
        r.mark_all();
        r.mark_all();
        r.mark(0);
        assert_eq!(drain(&mut r), vec![1, 0, 2]);
        r.mark(5); // out of range: ignored
        assert!(r.is_empty());
    }

    #[test]
    fn a_steady_stream_of_wake_ups_does_not_starve_the_pass() {
        let mut r = Ready::new(40);
        r.mark_all();
        let mut polled = 0;
        for _ in 0..(WOKEN_PER_POLLED as usize + 1) * 3 {
            r.mark(39); // always woken again, as a busy partition is
            if r.pop() != Some(39) {
                polled += 1;
            }
        }
        assert_eq!(polled, 3);
    }
}

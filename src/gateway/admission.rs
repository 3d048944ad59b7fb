//! Admission control: a send to a partition whose queue is too long or too old is refused at once
//! with `degraded {retry_after_ms}`, instead of joining a queue that grows without bound. Turns
//! already accepted are untouched: they stay in their stream and keep their place.
//!
//! A background task re-reads every partition's queue state from Redis each
//! `gateway.admission.refresh_ms` (sends never wait on it). The retry hint is the partition's
//! waiting turns divided by its measured throughput: turns that left the stream per second,
//! from XINFO STREAM's `entries-added` minus the stream length (ended turns are deleted from it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::AdmissionSettings;
use crate::settings_base::ms;
use crate::store::{Store, StoreError};

/// Partitions read at once by one refresh.
const READ_CONCURRENCY: usize = 8;
/// Weight of the newest throughput sample (exponential smoothing over refreshes).
const RATE_SMOOTHING: f64 = 0.5;

/// One partition's queue, as last read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartitionLoad {
    /// Turns in the stream not yet delivered to a worker.
    pub waiting: u64,
    /// Age of the oldest of them, in ms (0 when none wait).
    pub oldest_wait_ms: u64,
    /// Turns that have left the stream since it was created (finished, cancelled, dead).
    finished_total: u64,
    /// Smoothed turns finished per second.
    rate: f64,
}

impl From<crate::store::PartitionLoad> for PartitionLoad {
    fn from(l: crate::store::PartitionLoad) -> Self {
        Self { waiting: l.waiting, oldest_wait_ms: l.oldest_wait_ms, finished_total: l.finished_total, rate: 0.0 }
    }
}

/// The admission state of one gateway.
#[derive(Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    loads: Arc<RwLock<Arc<HashMap<u16, PartitionLoad>>>>,
}

impl Admission {
    /// Starts the refresher; it stops with `shutdown`.
    pub fn start(settings: AdmissionSettings, store: Store, shutdown: CancellationToken) -> Self {
        let a = Self { settings, loads: Arc::default() };
        let task = a.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ms(task.settings.refresh_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                if let Err(e) = task.refresh(&store, dt).await {
                    // Admission fails open: with the queue unknown, sends go on to Redis itself.
                    tracing::warn!(error = %e, "cannot read the queue state for admission control");
                }
            }
        });
        a
    }

    /// `Some(retry_after_ms)` when a send to partition `p` must be refused now.
    pub fn check(&self, p: u16) -> Option<u64> {
        let s = &self.settings;
        let loads = self.loads.read().unwrap_or_else(|e| e.into_inner()).clone();
        let load = loads.get(&p)?;
        let long = s.max_waiting_turns > 0 && load.waiting > s.max_waiting_turns;
        let old = s.max_wait_ms > 0 && load.oldest_wait_ms > s.max_wait_ms;
        if !(long || old) {
            return None;
        }
        // The partition's own rate, or the fleet's average per partition when it has none yet.
        let rate = if load.rate > 0.0 {
            load.rate
        } else {
            loads.values().map(|l| l.rate).sum::<f64>() / loads.len().max(1) as f64
        };
        let hint = if rate > 0.0 { (load.waiting as f64 / rate * 1000.0) as u64 } else { s.max_retry_ms };
        Some(hint.clamp(s.min_retry_ms, s.max_retry_ms))
    }

    async fn refresh(&self, store: &Store, dt: f64) -> Result<(), StoreError> {
        let now_ms = store.server_time_ms().await?;
        let reads = futures::stream::iter(0..store.keys().partitions())
            .map(|p| async move { store.partition_load(p, now_ms).await.map(|l| (p, PartitionLoad::from(l))) })
            .buffer_unordered(READ_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let previous = self.loads.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut next = HashMap::with_capacity(reads.len());
        for r in reads {
            let (p, mut load) = r?;
            if let Some(prev) = previous.get(&p) {
                let sample = load.finished_total.saturating_sub(prev.finished_total) as f64 / dt.max(0.001);
                load.rate = RATE_SMOOTHING * sample + (1.0 - RATE_SMOOTHING) * prev.rate;
            }
            next.insert(p, load);
        }
        let total: f64 = next.values().map(|l| l.rate).sum();
        metrics::gauge!(crate::metrics::GATEWAY_MEASURED_TURNS_PER_SEC).set(total);
        *self.loads.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(loads: &[(u16, u64, u64, f64)]) -> Admission {
        let settings = AdmissionSettings {
            max_waiting_turns: 10,
            max_wait_ms: 5000,
            refresh_ms: 1000,
            min_retry_ms: 100,
            max_retry_ms: 20_000,
        };
        let map = loads
            .iter()
            .map(|&(p, waiting, oldest_wait_ms, rate)| {
                (p, PartitionLoad { waiting, oldest_wait_ms, finished_total: 0, rate })
            })
            .collect();
        Admission { settings, loads: Arc::new(RwLock::new(Arc::new(map))) }
    }

    #[test]
    fn a_short_young_queue_admits_and_a_long_or_old_one_refuses_with_a_measured_hint() {
        let a = admission(&[(0, 5, 100, 1.0), (1, 40, 100, 4.0), (2, 3, 9000, 0.0), (3, 30, 0, 0.0)]);
        assert_eq!(a.check(0), None);
        assert_eq!(a.check(1), Some(10_000), "40 waiting at 4 turns/s");
        // No throughput of its own: the average of the partitions ((1+4)/4 = 1.25/s).
        assert_eq!(a.check(2), Some(2400));
        assert_eq!(a.check(9), None, "an unknown partition is admitted (fail open)");
    }

    #[test]
    fn the_hint_is_bounded_and_nothing_measured_means_the_maximum() {
        let a = admission(&[(0, 1_000_000, 0, 1.0)]);
        assert_eq!(a.check(0), Some(20_000));
        let a = admission(&[(0, 11, 0, 0.0)]);
        assert_eq!(a.check(0), Some(20_000));
        let a = admission(&[(0, 11, 0, 1000.0)]);
        assert_eq!(a.check(0), Some(100));
    }
}

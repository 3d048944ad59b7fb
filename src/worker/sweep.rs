//! The sweeper: takes over turns whose worker stopped extending their lease.
//!
//! Every worker sweeps on a timer; the `reclaim` function's lock lets one sweep a partition at a
//! time. Takeover time is at most `lease_ms` after the last write plus one sweep interval.

use std::sync::Arc;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{Delivery, Shared};
use crate::settings_base::ms;

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = ms(shared.settings.worker.sweep_interval_ms);
    let mut cursors = vec![String::from("-"); shared.store.keys().partitions() as usize];
    loop {
        // Jitter spreads the sweeps of many workers over the interval.
        let jitter = rand::rng().random_range(0..=interval.as_millis() as u64 / 4);
        tokio::select! {
            _ = tokio::time::sleep(interval + ms(jitter)) => {}
            _ = stop.cancelled() => return,
        }
        for (p, cursor) in cursors.iter_mut().enumerate() {
            let p = p as u16;
            let res = shared.store.reclaim(p, &shared.id, cursor).await;
            let (next, claimed) = match res {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "reclaim failed");
                    continue;
                }
            };
            *cursor = next;
            for c in claimed {
                tracing::info!(turn_id = %c.turn_id, partition = p, "taking over turn");
                metrics::counter!(crate::metrics::WORKER_RECLAIMS).increment(1);
                let traceparent = Some(c.traceparent);
                let d = Delivery { partition: p, entry_id: c.entry_id, base: c.base, turn_id: c.turn_id, traceparent };
                if !shared.dispatch(d, &stop).await {
                    return;
                }
            }
        }
    }
}

//! Per-partition queue gauges (lag, pending, oldest age), exported by one worker at a time.
//!
//! Every worker runs this loop; a leader lock in Redis picks the one that reads the partitions,
//! so the cost (three commands per partition per interval) does not grow with the fleet, and
//! dashboards do not sum the same partition many times. A former leader's gauges keep their last
//! value, so dashboards take `max by (partition)`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::metrics as m;
use crate::settings_base::ms;

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.settings.metrics.queue_interval_ms;
    let lock = shared.store.keys().exporter_lock();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ms(every)) => {}
            _ = stop.cancelled() => return,
        }
        match shared.store.lead(&lock, &shared.id, every * 3).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "queue exporter lock failed");
                continue;
            }
        }
        for p in 0..shared.store.keys().partitions() {
            match shared.store.partition_stats(p).await {
                Ok(s) => {
                    let label = p.to_string();
                    metrics::gauge!(m::QUEUE_LAG, "partition" => label.clone()).set(s.lag as f64);
                    metrics::gauge!(m::QUEUE_PENDING, "partition" => label.clone()).set(s.pending as f64);
                    metrics::gauge!(m::QUEUE_OLDEST_PENDING_SECONDS, "partition" => label)
                        .set(s.oldest_age_ms as f64 / 1000.0);
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "queue stats failed"),
            }
        }
    }
}

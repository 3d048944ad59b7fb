//! The reader on a single Redis: one blocking XREADGROUP over every partition stream, on a
//! connection of its own (`store::TurnReader`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::store::TurnReader;

/// Pause after a failed read, so an unreachable Redis is not hammered.
const READ_RETRY: Duration = Duration::from_millis(250);

pub(super) async fn run(shared: Arc<Shared>, reader: TurnReader, stop: CancellationToken) {
    let partitions = shared.store.keys().partitions() as usize;
    let per_stream_max = (shared.settings.worker.max_concurrent_turns / partitions).max(1) as u64;
    loop {
        // Wait for a free slot before claiming: what is claimed and not running is not leased.
        let free = tokio::select! {
            p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.cancelled() => break,
        };
        drop(free);
        let count = (shared.permits.available_permits() as u64 / partitions as u64).clamp(1, per_stream_max);
        let read = tokio::select! {
            r = reader.read(&shared.id, count) => r,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(deliveries) => {
                for d in deliveries {
                    if !shared.dispatch(d, &stop).await {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "XREADGROUP failed; retrying");
                tokio::select! { _ = tokio::time::sleep(READ_RETRY) => {}, _ = stop.cancelled() => break }
            }
        }
    }
    // End the server-side BLOCK so the connection closes promptly.
    reader.close().await;
}

//! The reader: XREADGROUP BLOCK over the partition streams on a dedicated client.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::Options;
use tokio_util::sync::CancellationToken;

use super::{Delivery, Shared};
use crate::keys::GROUP;
use crate::settings_base::ms;

/// Pause after a failed read, so an unreachable Redis is not hammered.
const READ_RETRY: Duration = Duration::from_millis(250);

pub(super) async fn run(shared: Arc<Shared>, reader: Client, stop: CancellationToken) {
    let keys = shared.store.keys().clone();
    let streams: Vec<String> = (0..keys.partitions()).map(|p| keys.stream(p)).collect();
    let ids: Vec<&str> = vec![">"; streams.len()];
    let block = shared.settings.worker.read_block_ms;
    // fred's client-side timeout does not end a server-side BLOCK, so it must exceed it.
    let opts =
        Options { timeout: Some(ms(block) + ms(shared.settings.redis.command_timeout_ms)), ..Default::default() };
    let per_stream_max = (shared.settings.worker.max_concurrent_turns / streams.len()).max(1) as u64;
    loop {
        // Wait for a free slot before claiming: what is claimed and not running is not leased.
        let free = tokio::select! {
            p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.cancelled() => break,
        };
        drop(free);
        let count = (shared.permits.available_permits() as u64 / streams.len() as u64).clamp(1, per_stream_max);
        let with_timeout = reader.with_options(&opts);
        let read = with_timeout.xreadgroup::<Value, _, _, _, _>(
            GROUP,
            shared.id.as_str(),
            Some(count),
            Some(block),
            false,
            streams.clone(),
            ids.clone(),
        );
        let reply = tokio::select! {
            r = read => r,
            _ = stop.cancelled() => break,
        };
        let value = match reply {
            Ok(v) if v.is_null() => continue,
            Ok(v) => v,
            Err(e) => {
                if e.details().contains("NOGROUP") {
                    // The streams or groups vanished (FLUSHALL, a failover that lost them).
                    tracing::warn!("consumer groups missing; recreating them");
                    if let Err(e) = shared.store.ensure_schema().await {
                        tracing::error!(error = %e, "cannot recreate consumer groups");
                    }
                } else {
                    tracing::warn!(error = %e, "XREADGROUP failed; retrying");
                }
                tokio::select! { _ = tokio::time::sleep(READ_RETRY) => {}, _ = stop.cancelled() => break }
                continue;
            }
        };
        let entries = match value.into_xread_response::<String, String, String, String>() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "unexpected XREADGROUP reply");
                continue;
            }
        };
        for (stream, items) in entries {
            let Some(partition) = streams.iter().position(|s| *s == stream) else { continue };
            for (entry_id, mut fields) in items {
                let (Some(base), Some(turn_id)) = (fields.remove("b"), fields.remove("t")) else {
                    tracing::error!(%stream, %entry_id, "turn entry without base or turn id");
                    continue;
                };
                let traceparent = fields.remove("tp");
                let d = Delivery { partition: partition as u16, entry_id, base, turn_id, traceparent };
                if !shared.dispatch(d, &stop).await {
                    break;
                }
            }
        }
    }
    // End the server-side BLOCK so the connection closes promptly.
    let _ = tokio::time::timeout(Duration::from_secs(1), reader.unblock_self(None)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), reader.quit()).await;
}

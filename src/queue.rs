//! Queue statistics per partition: what SREs scale and alert on, and what `ctl` shows.

use std::collections::HashMap;

use fred::prelude::*;

use crate::keys::GROUP;
use crate::store::{Store, StoreError};

/// The state of one partition's turn stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: u16,
    /// Entries in the stream: turns waiting or running.
    pub length: u64,
    /// Entries not yet delivered to any worker (XINFO GROUPS `lag`).
    pub lag: u64,
    /// Entries delivered and not yet acked: turns claimed and running (or held by a dead worker).
    pub pending: u64,
    /// Age of the oldest turn still in the stream, in ms (0 when empty).
    pub oldest_age_ms: u64,
}

/// Milliseconds part of a stream entry id (`<ms>-<seq>`).
pub fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Reads one partition's statistics (three commands).
pub async fn partition_stats(store: &Store, p: u16) -> Result<PartitionStats, StoreError> {
    let stream = store.keys().stream(p);
    let client = store.redis().client();
    let length: u64 = client.xlen(&stream).await?;
    let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(&stream).await?;
    let group = groups.iter().find(|g| g.get("name").and_then(|v| v.as_string()).as_deref() == Some(GROUP));
    let field = |name: &str| group.and_then(|g| g.get(name)).and_then(|v| v.as_u64()).unwrap_or(0);
    let (lag, pending) = (field("lag"), field("pending"));
    // The oldest entry is the oldest unfinished turn: ended turns are deleted from the stream.
    let first: Vec<(String, HashMap<String, String>)> = client.xrange(&stream, "-", "+", Some(1)).await?;
    // Redis time, like every lease decision: the caller's clock may differ.
    let now: (u64, u64) = client.custom(fred::cmd!("TIME"), Vec::<String>::new()).await?;
    let now_ms = now.0 * 1000 + now.1 / 1000;
    let oldest_age_ms = first.first().and_then(|(id, _)| entry_ms(id)).map(|ms| now_ms.saturating_sub(ms)).unwrap_or(0);
    Ok(PartitionStats { partition: p, length, lag, pending, oldest_age_ms })
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_ids_carry_their_time() {
        assert_eq!(super::entry_ms("1795286659076-0"), Some(1_795_286_659_076));
        assert_eq!(super::entry_ms("junk"), None);
    }
}

//! Reads for operators and control loops: queue state per partition (admission, the exporter,
//! `ctl`), pending turns, dead letters, and the few plain commands around them (server time,
//! the summary lock). None of it is on a turn's path, so these are plain commands rather than
//! ops of the write path.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};

use super::{Store, StoreError};
use crate::keys::{SessionKeys, GROUP};

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

/// One partition's queue as admission control reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLoad {
    /// Turns not yet delivered to a worker.
    pub waiting: u64,
    /// How long the oldest of them has waited, in ms (Redis time).
    pub oldest_wait_ms: u64,
    /// Turns that ever left the stream (ended turns are deleted from it): `entries-added` minus
    /// the length. Two readings give the partition's throughput.
    pub finished_total: u64,
}

/// A turn delivered to a worker and not yet acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTurn {
    pub worker: String,
    pub partition: u16,
    pub turn_id: String,
    /// The turn's hash (status, attempt, …); empty when it expired.
    pub fields: HashMap<String, String>,
}

/// Milliseconds part of a stream entry id (`<ms>-<seq>`).
pub fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Stream entries as fred returns them: (id, fields).
type Entries = Vec<(String, HashMap<String, String>)>;

impl Store {
    /// Redis server time in ms: every lease and age is measured on this clock, not the caller's.
    pub async fn server_time_ms(&self) -> Result<u64, StoreError> {
        let now: (u64, u64) = self.redis.client().custom(fred::cmd!("TIME"), Vec::<String>::new()).await?;
        Ok(now.0 * 1000 + now.1 / 1000)
    }

    /// One partition's statistics (four commands).
    pub async fn partition_stats(&self, p: u16) -> Result<PartitionStats, StoreError> {
        let stream = self.keys.stream(p);
        let client = self.redis.client();
        let length: u64 = client.xlen(&stream).await?;
        let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(&stream).await?;
        let group = groups.iter().find(|g| g.get("name").and_then(|v| v.as_string()).as_deref() == Some(GROUP));
        let field = |name: &str| group.and_then(|g| g.get(name)).and_then(|v| v.as_u64()).unwrap_or(0);
        let (lag, pending) = (field("lag"), field("pending"));
        // The oldest entry is the oldest unfinished turn: ended turns are deleted from the stream.
        let first: Entries = client.xrange(&stream, "-", "+", Some(1)).await?;
        let now_ms = self.server_time_ms().await?;
        let oldest_age_ms = first.first().and_then(|(id, _)| entry_ms(id)).map_or(0, |ms| now_ms.saturating_sub(ms));
        Ok(PartitionStats { partition: p, length, lag, pending, oldest_age_ms })
    }

    /// One partition's queue for admission control: stream length and entries added, the
    /// group's pending count and last delivered id, and the first entry after it (the oldest
    /// waiting turn), aged against `now_ms` (from [`Store::server_time_ms`]).
    pub async fn partition_load(&self, p: u16, now_ms: u64) -> Result<PartitionLoad, StoreError> {
        let stream = self.keys.stream(p);
        let client = self.redis.client();
        let info: HashMap<String, Value> = client.xinfo_stream(&stream, false, None).await?;
        let num = |m: &HashMap<String, Value>, k: &str| m.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let (length, added) = (num(&info, "length"), num(&info, "entries-added"));
        let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(&stream).await?;
        let group = groups.iter().find(|g| g.get("name").and_then(|v| v.as_string()).as_deref() == Some(GROUP));
        let pending = group.map(|g| num(g, "pending")).unwrap_or(0);
        let delivered = group.and_then(|g| g.get("last-delivered-id")).and_then(|v| v.as_string());
        // Entries still in the stream are waiting or pending (ended turns are deleted), so this
        // holds even when XINFO's `lag` is unknown, as it is after deletions.
        let waiting = length.saturating_sub(pending);
        let oldest_wait_ms = if waiting == 0 {
            0
        } else {
            let start = delivered.map_or_else(|| "-".to_string(), |id| format!("({id}"));
            let first: Entries = client.xrange(&stream, start, "+", Some(1)).await?;
            first.first().and_then(|(id, _)| entry_ms(id)).map_or(0, |t| now_ms.saturating_sub(t))
        };
        Ok(PartitionLoad { waiting, oldest_wait_ms, finished_total: added.saturating_sub(length) })
    }

    /// The node serving `key`: `host:port` in Cluster (from the client's routing table), else
    /// `standalone`.
    pub fn node_of(&self, key: &str) -> String {
        use fred::interfaces::ClusterInterface;
        if !self.redis.is_clustered() {
            return "standalone".into();
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        self.redis
            .client()
            .cached_cluster_state()
            .and_then(|state| state.get_server(slot).map(|s| format!("{}:{}", s.host, s.port)))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Up to `max` turns of partition `p` delivered to a worker and not acked, with their hashes.
    pub async fn pending_turns(&self, p: u16, max: u64) -> Result<Vec<PendingTurn>, StoreError> {
        let stream = self.keys.stream(p);
        let client = self.redis.client();
        let pending: Vec<(String, String, u64, u64)> = client.xpending(&stream, GROUP, ("-", "+", max)).await?;
        let mut out = Vec::with_capacity(pending.len());
        for (id, worker, _idle, _deliveries) in pending {
            let entries: Entries = client.xrange(&stream, &id, &id, None).await?;
            let Some((_, f)) = entries.first() else { continue };
            let (Some(base), Some(tid)) = (f.get("b"), f.get("t")) else { continue };
            let fields = self.turn_fields(base, tid).await?;
            out.push(PendingTurn { worker, partition: p, turn_id: tid.clone(), fields });
        }
        Ok(out)
    }

    /// The hash of turn `tid` of the session at `base` (empty when it expired).
    pub async fn turn_fields(&self, base: &str, tid: &str) -> Result<HashMap<String, String>, StoreError> {
        Ok(self.redis.client().hgetall(format!("{base}:turn:{tid}")).await?)
    }

    /// The user's text and the options of turn `tid` (what a dead-letter replay sends again).
    pub async fn turn_message(&self, base: &str, tid: &str) -> Result<(Option<String>, bytes::Bytes), StoreError> {
        let (text, opts): (Option<String>, Option<bytes::Bytes>) =
            self.redis.client().hmget(format!("{base}:turn:{tid}"), vec!["text", "opts"]).await?;
        Ok((text, opts.unwrap_or_default()))
    }

    /// The keys of the session whose waiting or running turn is `turn_id`, found by scanning
    /// the turn streams (they hold only waiting and running turns). For operators: O(queue).
    pub async fn find_queued_turn(&self, turn_id: &str) -> Result<Option<SessionKeys>, StoreError> {
        let client = self.redis.client();
        for p in 0..self.keys.partitions() {
            let stream = self.keys.stream(p);
            let mut start = "-".to_string();
            loop {
                let page: Entries = client.xrange(&stream, &start, "+", Some(1000)).await?;
                if let Some((_, f)) = page.iter().find(|(_, f)| f.get("t").map(String::as_str) == Some(turn_id)) {
                    let base = f.get("b").cloned().unwrap_or_default();
                    return Ok(Some(self.keys.session_of_base(p, base)));
                }
                match page.last() {
                    Some((id, _)) if page.len() == 1000 => start = format!("({id}"),
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    /// Dead letter `entry` of partition `p`, if it exists.
    pub async fn dead_letter(&self, p: u16, entry: &str) -> Result<Option<HashMap<String, String>>, StoreError> {
        let entries: Entries = self.redis.client().xrange(self.keys.dlq(p), entry, entry, None).await?;
        Ok(entries.into_iter().next().map(|(_, f)| f))
    }

    /// The newest `count` dead letters of partition `p`, newest first: (entry id, fields).
    pub async fn dead_letters(&self, p: u16, count: u64) -> Result<Entries, StoreError> {
        Ok(self.redis.client().xrevrange(self.keys.dlq(p), "+", "-", Some(count)).await?)
    }

    /// Deletes dead letter `entry` of partition `p` (after a replay).
    pub async fn delete_dead_letter(&self, p: u16, entry: &str) -> Result<(), StoreError> {
        let _: i64 = self.redis.client().xdel(self.keys.dlq(p), entry).await?;
        Ok(())
    }

    /// Removes `consumer` from partition `p`'s group when it has nothing pending (a worker that
    /// stops), so the group does not collect dead names; one with pending entries stays for
    /// reclaim. Returns whether it was removed.
    pub async fn leave_group_if_idle(&self, p: u16, consumer: &str) -> Result<bool, StoreError> {
        let stream = self.keys.stream(p);
        let client = self.redis.client();
        let pending: Vec<(String, String, u64, u64)> = client.xpending(&stream, GROUP, ("-", "+", 1, consumer)).await?;
        if !pending.is_empty() {
            return Ok(false);
        }
        let _: Value = client.xgroup_delconsumer(&stream, GROUP, consumer).await?;
        Ok(true)
    }

    /// Takes the session's summary lock for `hold_ms` (one summary call per session at a time);
    /// false when another holder has it. It expires by itself, so a holder that dies frees it.
    pub async fn try_summary_lock(&self, base: &str, hold_ms: u64) -> Result<bool, StoreError> {
        let lock = format!("{base}:summarizing");
        let hold = Expiration::PX(hold_ms as i64);
        let set: Option<String> = self.redis.client().set(&lock, "1", Some(hold), Some(SetOptions::NX), false).await?;
        Ok(set.is_some())
    }

    /// Frees the summary lock taken by [`Store::try_summary_lock`].
    pub async fn release_summary_lock(&self, base: &str) -> Result<(), StoreError> {
        let _: i64 = self.redis.client().del(format!("{base}:summarizing")).await?;
        Ok(())
    }
}

/// One `INFO` section of the server behind `url`, on a connection of its own that lives for this
/// call (the bench reads the servers it started, not through a process's pool). Connecting and
/// the reply are each bounded by `timeout`.
pub async fn info_of(url: &str, section: &str, timeout: std::time::Duration) -> Result<String, StoreError> {
    let mut config = Config::from_url(url)?;
    config.fail_fast = true;
    let c = Builder::from_config(config)
        .with_connection_config(|cc| {
            cc.connection_timeout = timeout;
            cc.internal_command_timeout = timeout;
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .build()?;
    let connected = tokio::time::timeout(timeout, c.init()).await;
    let info = match connected {
        Ok(Ok(_)) => c.custom::<String, _>(fred::cmd!("INFO"), vec![section]).await.map_err(StoreError::from),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(StoreError::canceled("INFO: no connection in time")),
    };
    let _ = tokio::time::timeout(timeout, c.quit()).await;
    info
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_ids_carry_their_time() {
        assert_eq!(super::entry_ms("1795286659076-0"), Some(1_795_286_659_076));
        assert_eq!(super::entry_ms("junk"), None);
    }
}

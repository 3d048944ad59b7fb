//! Takeover of turns whose worker is gone, and leader locks.
//!
//! A sweep step is two calls: `cf3_reclaim_scan` pages through a partition's pending entries
//! (under the partition's sweep lock) and names the candidates; then one `reclaim` op per
//! candidate, group-committed, decides on the turn's lease and takes it over. The second step is
//! where the sessions' keys are known, so it can declare them (Cluster slot migration routes by
//! declared keys).

use fred::prelude::*;

use super::conn::function;
use super::ops::OpBuilder;
use super::reply::Reply;
use super::{Store, StoreError};
use crate::keys::GROUP;
use crate::settings::WorkerSettings;

/// A turn taken over by `reclaim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub entry_id: String,
    pub base: String,
    pub turn_id: String,
    /// W3C trace context of the turn ('' when none was recorded).
    pub traceparent: String,
}

/// What a sweep needs from the worker settings.
#[derive(Clone)]
pub(super) struct SweepParams {
    /// The sweep lock outlives one interval, so a live holder keeps it, and expires well before a
    /// lease does when the holder dies.
    lock_ms: u64,
    /// Entries idle less than a heartbeat were just delivered: skipped to save reads. Leases
    /// decide; idle time only filters, so a released turn is taken at the next sweep.
    min_idle_ms: u64,
    batch: u64,
    max_attempts: u32,
    consumer_gc_idle_ms: u64,
}

impl SweepParams {
    pub fn new(w: &WorkerSettings) -> Self {
        Self {
            lock_ms: w.sweep_interval_ms * 2,
            min_idle_ms: w.heartbeat_ms,
            batch: w.sweep_batch,
            max_attempts: w.max_attempts,
            consumer_gc_idle_ms: w.consumer_gc_idle_ms,
        }
    }
}

impl Store {
    /// One sweep step of partition `p`; returns the next cursor and the turns now claimed by
    /// `worker`.
    pub async fn reclaim(&self, p: u16, worker: &str, cursor: &str) -> Result<(String, Vec<Claimed>), StoreError> {
        let w = &self.sweep;
        let stream = self.keys.stream(p);
        let v: Value = self
            .redis
            .client()
            .fcall(
                function::RECLAIM_SCAN,
                vec![stream.clone(), self.keys.sweep_lock(p), self.keys.dlq(p)],
                vec![
                    GROUP.to_string(),
                    worker.to_string(),
                    w.lock_ms.to_string(),
                    w.min_idle_ms.to_string(),
                    w.batch.to_string(),
                    cursor.to_string(),
                    w.consumer_gc_idle_ms.to_string(),
                    self.dlq_max.to_string(),
                ],
            )
            .await?;
        let mut r = Reply::new(function::RECLAIM_SCAN, v)?;
        let next = r.string()?;
        let mut list = r.array()?;
        let mut found = Vec::with_capacity(list.len());
        while list.len() > 0 {
            let mut c = list.array()?;
            found.push(Claimed {
                entry_id: c.string()?,
                base: c.string()?,
                turn_id: c.string()?,
                traceparent: c.string()?,
            });
        }
        let settle = found.into_iter().map(|c| async move {
            if c.base.is_empty() || c.turn_id.is_empty() {
                return Ok(None);
            }
            let op = OpBuilder::turn("reclaim", &c.base, &c.turn_id)
                .key(self.keys.stream(p))
                .key(self.keys.dlq(p))
                .keys(self.archive_key(p))
                .str(&c.turn_id)
                .str(&c.entry_id)
                .str(worker)
                .uint(u64::from(w.max_attempts))
                .build();
            let mut r = self.op(&c.base, op).await?;
            Ok::<_, StoreError>((r.string()? == "claimed").then_some(c))
        });
        let claimed = futures::future::try_join_all(settle).await?.into_iter().flatten().collect();
        Ok((next, claimed))
    }

    /// Takes or renews the leader lock `lock` for `id`; true while `id` leads.
    pub async fn lead(&self, lock: &str, id: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let v: i64 = self
            .redis
            .client()
            .fcall(function::LEAD, vec![lock.to_string()], vec![id.to_string(), ttl_ms.to_string()])
            .await?;
        Ok(v == 1)
    }
}

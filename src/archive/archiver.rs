//! The archiver: copies the archive streams to PostgreSQL, off the turn's path.
//!
//! A member of the `archivers` consumer group on every partition's archive stream. It reads a
//! batch, writes it in one transaction (idempotent by turn id), and only then acks and deletes
//! the entries. So:
//! - a crash before the commit leaves the entries pending: another archiver takes them over
//!   after `archive.claim_idle_ms` (XAUTOCLAIM), and a restarted one re-reads its own first;
//! - a crash between commit and ack redelivers entries whose rows exist: nothing is doubled;
//! - PostgreSQL down: the batch is retried with backoff (`archive.retry_max_ms`), nothing is
//!   acked, the streams grow (the backlog gauge shows it) and turns go on in Redis.
//!
//! It runs in every worker process (`app::run_worker`) when `archive.url` is set.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{retention, Archive};
use crate::metrics as m;
use crate::settings::ms;
use crate::store::{ArchiveEntry, FinishedTurn, Store, StoreError};

/// A running archiver (its loop, backlog gauge and retention job).
pub struct Archiver {
    id: String,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Archiver {
    /// Joins the consumer groups and starts the loops. Fails only when Redis cannot be reached;
    /// PostgreSQL may be down (it is retried).
    pub async fn start(store: Store, archive: Archive, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let id = format!("a-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        store.ensure_archive_groups().await?;
        crate::metrics_catalog::register_archiver();
        let reader = if store.redis().is_clustered() { None } else { Some(store.redis().dedicated_reader().await?) };
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        // The schema now if PostgreSQL answers, so the conversations API finds it at once; else
        // before the first write.
        let migrated = match tokio::time::timeout(ms(archive.settings().acquire_timeout_ms), archive.migrate()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "archive schema not applied yet; retrying before the first write");
                false
            }
            Err(_) => false,
        };
        let copy = Copy { store: store.clone(), archive: archive.clone(), id: id.clone(), migrated };
        tasks.spawn(copy.run(reader, stop.clone()));
        tasks.spawn(backlog(store, archive.settings().backlog_every_ms, stop.clone()));
        tasks.spawn(retention::run(archive, stop.clone()));
        tracing::info!(archiver = %id, "archiver started");
        Ok(Self { id, tasks, stop })
    }

    /// This archiver's consumer name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits until shutdown has stopped every loop (a batch being written is finished first).
    pub async fn wait(mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "archiver task failed");
            }
        }
    }

    /// Stops at once, wherever the loops are (mid-batch too), as a crash would.
    pub async fn kill(mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Copy {
    store: Store,
    archive: Archive,
    id: String,
    migrated: bool,
}

impl Copy {
    async fn run(mut self, reader: Option<crate::store::Dedicated>, stop: CancellationToken) {
        let s = self.archive.settings().clone();
        let parts = self.store.keys().partitions();
        // Checked between reads (a read dropped mid-BLOCK could leave delivered entries behind).
        let claim_every = ms(s.claim_idle_ms / 2);
        let mut next_claim = tokio::time::Instant::now();
        // Own entries left unacked by an earlier life under this name come first.
        let mut own_pending = true;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let claiming = tokio::time::Instant::now() >= next_claim;
            let entries = if claiming {
                next_claim = tokio::time::Instant::now() + claim_every;
                self.claim(parts, s.claim_idle_ms, s.batch).await
            } else {
                let read = async {
                    match &reader {
                        Some(r) => self.store.read_archive_all(r, &self.id, s.batch, s.block_ms, own_pending).await,
                        None => {
                            let mut all = Vec::new();
                            for p in 0..parts {
                                all.extend(self.store.read_archive(p, &self.id, s.batch).await?);
                            }
                            Ok(all)
                        }
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = read => r,
                }
            };
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the archive streams failed");
                    // The streams or the group may be gone (Redis lost its data, FLUSHALL):
                    // recreating them is idempotent.
                    if let Err(e) = self.store.ensure_archive_groups().await {
                        tracing::debug!(error = %e, "recreating the archive groups failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ms(s.block_ms)) => continue,
                    }
                }
            };
            if entries.is_empty() {
                if claiming {
                    continue;
                }
                own_pending = false;
                if reader.is_none() {
                    // Cluster: nothing anywhere; poll again after a pause.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ms(s.block_ms)) => {}
                    }
                }
                continue;
            }
            if !self.archive_entries(entries, &stop).await {
                break;
            }
        }
        if let Some(r) = reader {
            r.quit().await;
        }
    }

    /// Entries idle too long in other (dead) archivers' hands, from every partition.
    async fn claim(&self, parts: u16, min_idle_ms: u64, count: u64) -> Result<Vec<ArchiveEntry>, StoreError> {
        let mut all = Vec::new();
        for p in 0..parts {
            all.extend(self.store.claim_archive(p, &self.id, min_idle_ms, count).await?);
        }
        Ok(all)
    }

    /// Writes the turns of `entries`, retrying until PostgreSQL takes them, then acks all of
    /// them. False when shutdown interrupted the retries (nothing acked).
    async fn archive_entries(&mut self, entries: Vec<ArchiveEntry>, stop: &CancellationToken) -> bool {
        let mut turns: Vec<FinishedTurn> = Vec::with_capacity(entries.len());
        for e in &entries {
            match &e.turn {
                Some(Ok(t)) => turns.push(t.clone()),
                Some(Err(why)) => {
                    metrics::counter!(m::ARCHIVE_MALFORMED).increment(1);
                    tracing::error!(entry = %e.id, partition = e.partition, error = %why, "malformed archive entry dropped");
                }
                None => {}
            }
        }
        let retry_max = self.archive.settings().retry_max_ms;
        let mut attempt = 0u32;
        loop {
            let started = std::time::Instant::now();
            match self.write(&turns).await {
                Ok(inserted) => {
                    metrics::histogram!(m::ARCHIVE_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::counter!(m::ARCHIVE_TURNS).increment(inserted);
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    metrics::counter!(m::ARCHIVE_WRITE_ERRORS).increment(1);
                    tracing::warn!(error = %e, attempt, turns = turns.len(), "archive batch failed; retrying");
                    let wait = (50u64 << attempt.min(10)).min(retry_max);
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(ms(wait)) => {}
                    }
                }
            }
        }
        self.ack(entries, stop).await
    }

    async fn write(&mut self, turns: &[FinishedTurn]) -> Result<u64, super::ArchiveError> {
        if !self.migrated {
            self.archive.migrate().await?;
            self.migrated = true;
        }
        Ok(self.archive.write_batch(turns).await?.inserted)
    }

    /// Acks and deletes the entries, per partition; retried while Redis fails (the rows are
    /// committed: a redelivery would only find them).
    async fn ack(&self, entries: Vec<ArchiveEntry>, stop: &CancellationToken) -> bool {
        let mut by_partition: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for e in entries {
            by_partition.entry(e.partition).or_default().push(e.id);
        }
        for (p, ids) in by_partition {
            while let Err(e) = self.store.ack_archive(p, ids.clone()).await {
                tracing::warn!(error = %e, "acking archived entries failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
        true
    }
}

/// Refreshes the backlog gauge until shutdown.
async fn backlog(store: Store, every_ms: u64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ms(every_ms));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.archive_backlog().await {
            Ok(n) => metrics::gauge!(m::ARCHIVE_BACKLOG).set(n as f64),
            Err(e) => tracing::debug!(error = %e, "archive backlog unavailable"),
        }
    }
}

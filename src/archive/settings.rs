//! `[archive]`: the PostgreSQL archive of finished turns (off while `url` is empty).

use serde::Deserialize;

use crate::settings_base::SettingsError;

/// The archive's connection, its stream and batch bounds, retention and API limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ArchiveSettings {
    /// `postgres://user:pass@host:port/db`. Empty: no archive (turns live only in Redis, for
    /// `session.ttl_secs`), and the conversations API answers `not_found`.
    pub url: String,
    /// Connections of each process's pool (archivers write, gateways read).
    pub pool_size: u32,
    /// Time allowed to get a connection (including connecting) before a call fails.
    pub acquire_timeout_ms: u64,
    /// PostgreSQL `statement_timeout` of every connection: no query runs longer.
    pub statement_timeout_ms: u64,
    /// Approximate length bound of each partition's archive stream (XADD MAXLEN ~). It is the
    /// backlog Redis keeps while PostgreSQL is down: an outage that outlasts it loses the
    /// oldest unarchived turns from the archive (never from the live session).
    pub stream_max_len: u64,
    /// Turns written per transaction.
    pub batch: u64,
    /// How long an archiver's read blocks waiting for finished turns (standalone Redis); in
    /// Redis Cluster, the pause between polls of all partitions when they were all empty.
    pub block_ms: u64,
    /// Entries delivered to an archiver that has not acked them for this long are taken over
    /// by another (the first archiver died mid-batch).
    pub claim_idle_ms: u64,
    /// Longest pause between retries of a batch that PostgreSQL refused (exponential backoff).
    pub retry_max_ms: u64,
    /// How often the backlog gauge is refreshed (one XLEN per partition).
    pub backlog_every_ms: u64,
    /// Conversations idle for this many days are deleted by the retention job (0 = keep all).
    pub retention_days: u64,
    /// Interval of the retention job.
    pub retention_every_secs: u64,
    /// Sessions deleted per retention statement (keeps each transaction short).
    pub retention_batch: u64,
    /// Longest a gateway waits for the archive when a client opens a session Redis no longer
    /// has; past it, the session opens empty (and the restore is counted as failed).
    pub restore_timeout_ms: u64,
    /// Largest page of the conversations API (sessions or messages).
    pub page_max: u32,
    /// Most turns in one user's export (`GET /v1/export`); past it the export says `truncated`.
    pub export_max_turns: u32,
    /// Words of the first message that make a conversation's first title.
    pub title_words: usize,
    /// Archive stream entries scanned by an erasure for the session's unarchived turns.
    pub erase_scan_max: u64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 4,
            acquire_timeout_ms: 3000,
            statement_timeout_ms: 10_000,
            stream_max_len: 100_000,
            batch: 200,
            block_ms: 1000,
            claim_idle_ms: 30_000,
            retry_max_ms: 5000,
            backlog_every_ms: 5000,
            retention_days: 0,
            retention_every_secs: 3600,
            retention_batch: 1000,
            restore_timeout_ms: 1000,
            page_max: 100,
            export_max_turns: 100_000,
            title_words: 8,
            erase_scan_max: 100_000,
        }
    }
}

impl ArchiveSettings {
    /// True when an archive is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), SettingsError> {
            ok.then_some(()).ok_or_else(|| SettingsError::Invalid { key, reason: reason.into() })
        }
        if !self.enabled() {
            return Ok(());
        }
        check(
            self.url.starts_with("postgres://") || self.url.starts_with("postgresql://"),
            "archive.url",
            "must start with postgres:// or postgresql://",
        )?;
        check(self.pool_size >= 1, "archive.pool_size", "must be at least 1")?;
        check(self.acquire_timeout_ms > 0, "archive.acquire_timeout_ms", "must be > 0")?;
        check(self.statement_timeout_ms > 0, "archive.statement_timeout_ms", "must be > 0")?;
        check(self.stream_max_len >= 1000, "archive.stream_max_len", "must be at least 1000")?;
        check((1..=10_000).contains(&self.batch), "archive.batch", "must be 1..=10000")?;
        check((10..=10_000).contains(&self.block_ms), "archive.block_ms", "must be 10..=10000")?;
        check(self.claim_idle_ms >= 100, "archive.claim_idle_ms", "must be at least 100")?;
        check(self.retention_every_secs >= 1, "archive.retention_every_secs", "must be at least 1")?;
        check(self.retention_batch >= 1, "archive.retention_batch", "must be at least 1")?;
        check(self.restore_timeout_ms > 0, "archive.restore_timeout_ms", "must be > 0")?;
        check((1..=1000).contains(&self.page_max), "archive.page_max", "must be 1..=1000")?;
        check(self.export_max_turns >= 1, "archive.export_max_turns", "must be at least 1")?;
        check(self.title_words >= 1, "archive.title_words", "must be at least 1")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_a_bad_url_or_bound_is_refused_by_name() {
        let mut s = ArchiveSettings::default();
        assert!(!s.enabled());
        s.validate().unwrap();
        s.url = "mysql://x".into();
        assert!(s.validate().unwrap_err().to_string().contains("archive.url"));
        s.url = "postgres://u@h/db".into();
        s.validate().unwrap();
        s.batch = 0;
        assert!(s.validate().unwrap_err().to_string().contains("archive.batch"));
    }
}

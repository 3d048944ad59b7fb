//! The retention job: conversations idle for `archive.retention_days` are deleted (their turns
//! with them, by cascade), a bounded batch per statement so no transaction grows large.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Archive, ArchiveError};
use crate::metrics as m;

/// Erasure tombstones are kept this long when retention is off: far longer than any backlog.
const TOMBSTONE_DAYS_WITHOUT_RETENTION: u64 = 30;
const DAY_MS: i64 = 86_400_000;

impl Archive {
    /// Deletes conversations whose last activity is more than `days` before `now_ms`, and
    /// erasure tombstones as old. Returns the conversations deleted.
    pub async fn apply_retention(&self, days: u64, now_ms: i64) -> Result<u64, ArchiveError> {
        let cutoff = now_ms - days as i64 * DAY_MS;
        let batch = self.settings.retention_batch as i64;
        let mut deleted = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM sessions WHERE ctid IN \
                 (SELECT ctid FROM sessions WHERE last_activity_ms < $1 LIMIT $2)",
            )
            .bind(cutoff)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += n;
            if (n as i64) < batch {
                break;
            }
        }
        sqlx::query("DELETE FROM erasures WHERE erased_ms < $1").bind(cutoff).execute(&self.pool).await?;
        Ok(deleted)
    }
}

/// Runs the job every `archive.retention_every_secs` until shutdown (when retention is on), and
/// drops old tombstones when it is off.
pub async fn run(archive: Archive, shutdown: CancellationToken) {
    let s = archive.settings().clone();
    let days = if s.retention_days > 0 { s.retention_days } else { TOMBSTONE_DAYS_WITHOUT_RETENTION };
    let mut tick = tokio::time::interval(Duration::from_secs(s.retention_every_secs));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let result = if s.retention_days > 0 {
            archive.apply_retention(days, now_ms).await
        } else {
            // Only tombstones: nothing has a cutoff for conversations.
            sqlx::query("DELETE FROM erasures WHERE erased_ms < $1")
                .bind(now_ms - days as i64 * DAY_MS)
                .execute(archive.pool())
                .await
                .map(|_| 0)
                .map_err(Into::into)
        };
        match result {
            Ok(n) => metrics::counter!(m::ARCHIVE_RETENTION_DELETED).increment(n),
            Err(e) => tracing::warn!(error = %e, "archive retention failed; retrying at the next interval"),
        }
    }
}

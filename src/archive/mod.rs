//! The archive: finished turns in PostgreSQL, so conversations outlive Redis.
//!
//! Redis keeps the live turn; when archiving is on (`archive.url`), `end_turn` also appends every
//! finished turn to its partition's archive stream (`store::archive`). Then:
//! - [`archiver`]: a consumer-group loop (in every worker process) copies the streams to
//!   PostgreSQL in batches with idempotent upserts ([`writer`]), acking after the commit;
//! - [`reader`]: the queries of the conversations API (`gateway::conversations`) and of the
//!   restore of a session whose Redis keys expired;
//! - [`retention`]: the job that deletes conversations idle for `archive.retention_days`.
//!
//! Nothing on a turn's path waits for PostgreSQL: an outage grows the streams' backlog (a
//! metric), and the archivers catch up when it is back. The schema is in `migrations/`.

pub mod archiver;
pub mod reader;
pub mod retention;
mod settings;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use settings::ArchiveSettings;

/// The schema, embedded at build time from `migrations/` (no database needed to build).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A failed archive call.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// PostgreSQL refused, timed out or could not be reached.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the archive schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A handle on the archive database. Cheap to clone.
#[derive(Clone)]
pub struct Archive {
    pool: PgPool,
    settings: ArchiveSettings,
}

impl Archive {
    /// A pool that connects on first use, so a process starts (and serves turns) while
    /// PostgreSQL is down. Fails only on a malformed URL.
    pub fn new(settings: &ArchiveSettings) -> Result<Self, ArchiveError> {
        let statement_timeout = settings.statement_timeout_ms.to_string();
        let options = PgConnectOptions::from_str(&settings.url)?
            .options([("statement_timeout", statement_timeout.as_str())])
            .application_name("chatfleet");
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_lazy_with(options);
        Ok(Self { pool, settings: settings.clone() })
    }

    /// Applies the migrations not applied yet (PostgreSQL's advisory lock makes concurrent
    /// callers safe).
    pub async fn migrate(&self) -> Result<(), ArchiveError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub fn settings(&self) -> &ArchiveSettings {
        &self.settings
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The first `words` words of a message, as a conversation's first title (at most 200 chars).
pub fn first_title(text: &str, words: usize) -> String {
    let title: String = text.split_whitespace().take(words).collect::<Vec<_>>().join(" ");
    title.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_first_title_is_the_first_words_bounded() {
        assert_eq!(super::first_title("  hello   big\nworld again ", 3), "hello big world");
        assert_eq!(super::first_title(&"x".repeat(500), 8).len(), 200);
        assert_eq!(super::first_title("", 8), "");
    }
}

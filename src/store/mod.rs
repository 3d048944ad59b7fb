//! Redis: connections, the Functions library, and a typed call per operation. Every access to
//! Redis in chatfleet goes through this module.
//!
//! - [`Redis`] owns the connections of a process: a command pool with timeouts for everything
//!   non-blocking, plus factories for the dedicated clients that must not share it (a blocking
//!   XREADGROUP holds its connection; a subscriber connection runs only pub/sub).
//! - [`Store`] is the typed API over `lua/chatfleet.lua`. Writes are ops that travel in group
//!   commits (`batch`): [`session`] (what gateways do), [`turn`] (what workers do with a turn),
//!   [`sweep`] (takeover of dead workers' turns, leader locks), [`quota`] (tenant quotas);
//!   [`inspect`] reads queue state, pending turns and dead letters for control loops and `ctl`.
//!   Every call is safe to resend (docs/architecture.md, "The write path").

mod archive;
mod batch;
mod claim;
mod conn;
mod inspect;
#[cfg(test)]
mod lost_write_tests;
mod ops;
mod pubsub;
mod quota;
mod reply;
#[cfg(test)]
mod resend_tests;
mod session;
#[cfg(test)]
mod start_tests;
mod sweep;
mod turn;

use fred::types::Value;

pub use archive::{ArchiveEntry, Erased, FinishedTurn, ARCHIVE_GROUP};
pub use claim::{Delivery, TurnReader};
pub use conn::{Dedicated, Redis, FUNCTIONS_LIBRARY, LIBRARY_NAME};
pub use inspect::{entry_ms, info_of, PartitionLoad, PartitionStats, PendingTurn};
pub use pubsub::{Message, Subscriber};
pub use quota::{QuotaAsk, QuotaOutcome};
pub use session::{Actor, CancelOutcome, EnqueueOutcome, LogRead, NewMessage, Opened};
pub use sweep::Claimed;
pub use turn::{FinishArgs, StartOutcome, TurnAudit, TurnContext, TurnWriter, UsageSource, WriteOutcome};

use crate::keys::Keyspace;
use crate::settings::Settings;
use batch::Batcher;

/// A failed Redis call or an unexpected reply.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused or could not be reached (includes timeouts).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A function replied with a shape this build does not know: a version mismatch or a bug.
    #[error("unexpected reply from {function}: {detail}")]
    Reply { function: &'static str, detail: String },
    /// A stored payload could not be decoded.
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),
}

impl StoreError {
    /// The call was given up before Redis answered (its task stopped): transient.
    pub fn canceled(detail: &'static str) -> Self {
        Self::Redis(fred::error::Error::new(fred::error::ErrorKind::Canceled, detail))
    }

    /// A failure known only by its message (one error shared by several waiters).
    pub fn other(detail: String) -> Self {
        Self::Redis(fred::error::Error::new(fred::error::ErrorKind::Unknown, detail))
    }

    /// Redis could not be reached or did not answer in time (a dropped connection, a failover, a
    /// stall): the same call may succeed when sent again. Replies and refusals are not.
    pub fn is_transient(&self) -> bool {
        use fred::error::ErrorKind;
        matches!(self, Self::Redis(e) if matches!(e.kind(), ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Routing))
    }
}

/// The settings every op of a batch reads: ARGV[1..8] of `cf3_batch`, in the order the Lua side
/// reads them (ttl, log_max, hist_max, dedupe_max, dlq_max, lease_ms, group, archive_max; an
/// archive_max of 0 means archiving is off: turn ends are not archived).
fn batch_settings(settings: &Settings, archive_max: u64) -> Vec<Value> {
    let (s, w) = (&settings.session, &settings.worker);
    let n = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    vec![
        n(s.ttl_secs),
        n(s.log_max_events),
        n(s.history_max_messages),
        n(s.dedupe_max_sends),
        n(w.dead_letter_max_len),
        n(w.lease_ms),
        Value::from_static_str(crate::keys::GROUP),
        n(archive_max),
    ]
}

/// The typed function API. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    redis: Redis,
    keys: Keyspace,
    batcher: Batcher,
    replay_max: u64,
    hist_max: u64,
    dlq_max: u64,
    worker_channel_prefix: String,
    sweep: sweep::SweepParams,
    /// How long a turn write is sent again while Redis cannot be reached: two leases, so a
    /// worker rides out a failover and keeps its turn unless a sweeper takes it first.
    write_retry: std::time::Duration,
    /// MAXLEN of the archive streams when archiving is on (`archive.url` set), else 0.
    archive_max: u64,
    /// How often a streaming turn's delta declares the whole session (`emit` instead of the
    /// lighter `emitc`), so Redis refreshes the session's TTL during an answer longer than it:
    /// ttl/8, well inside the ttl/4 at which the function refreshes it.
    full_emit_every_ms: u64,
}

impl Store {
    pub fn new(redis: Redis, settings: &Settings) -> Self {
        let keys = Keyspace::new(settings.redis.key_prefix.clone(), settings.redis.partitions);
        let (s, w) = (&settings.session, &settings.worker);
        let archive_max = if settings.archive.enabled() { settings.archive.stream_max_len.max(1) } else { 0 };
        let batcher = Batcher::new(redis.clone(), batch_settings(settings, archive_max), keys.partitions());
        Self {
            worker_channel_prefix: keys.worker_channel_prefix(),
            keys,
            redis,
            batcher,
            replay_max: s.replay_max_events,
            hist_max: s.history_max_messages,
            dlq_max: w.dead_letter_max_len,
            sweep: sweep::SweepParams::new(w),
            write_retry: std::time::Duration::from_millis(w.lease_ms * 2),
            archive_max,
            full_emit_every_ms: s.ttl_secs * 1000 / 8,
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// Loads the functions and creates the consumer group of every partition.
    pub async fn ensure_schema(&self) -> Result<(), StoreError> {
        self.redis.load_functions().await?;
        let creates = (0..self.keys.partitions()).map(|p| self.redis.ensure_group_owned(self.keys.stream(p)));
        futures::future::try_join_all(creates).await?;
        Ok(())
    }

    /// Sends one op with the next group commit of its partition's lane.
    async fn op(&self, base: &str, op: ops::Op) -> Result<reply::Reply, StoreError> {
        let kind = op.kind;
        let p = Keyspace::partition_in(base).unwrap_or(0);
        let v = self.batcher.call(p, op).await?;
        reply::Reply::new(kind, v)
    }
}

//! [`Store`] calls of the tenant quota functions (`cf3_quota_*` in `lua/chatfleet.lua`).
//!
//! Kept apart from the session ops because their keys live in the tenant's own slot
//! (`{t:<tenant>}`), never in a partition's: callers must not expect them to be atomic with a
//! session op. Both are safe to resend: acquire is idempotent by member (a member that holds a
//! slot is admitted again and counted once), release removes and uncounts only what is there.

use std::time::{SystemTime, UNIX_EPOCH};

use fred::prelude::*;

use super::conn::function;
use super::reply::Reply;
use super::{Store, StoreError};

/// Result of `quota_acquire`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// Counted: the turn holds a slot until released.
    Admitted,
    /// The tenant's turns of this clock minute are used up; nothing was written.
    PerMinute { retry_after_ms: u64 },
    /// Every in-flight slot is held; the oldest holders with their ages (ms), for the caller to
    /// check.
    InFlight { holders: Vec<(String, u64)> },
}

/// A quota slot asked for in the same call as an enqueue ([`Store::enqueue_turn_with_quota`]),
/// with the limits of [`Store::quota_acquire`].
#[derive(Debug, Clone)]
pub struct QuotaAsk<'a> {
    pub tenant: &'a str,
    pub member: &'a str,
    pub max_inflight: u64,
    pub max_per_minute: u64,
    pub stale_ms: u64,
    pub max_listed: u64,
}

impl QuotaAsk<'_> {
    /// The function's arguments after its keys: member, limits.
    pub(super) fn args(&self) -> (&str, u64, u64, u64, u64) {
        (self.member, self.max_inflight, self.max_per_minute, self.stale_ms, self.max_listed)
    }
}

/// What one quota step answered: an outcome, or the clock minute to name instead.
pub(super) enum QuotaStep {
    Done(QuotaOutcome),
    Minute(u64),
}

/// Parses `cf3_quota_acquire`'s reply (also the 5th element of an `enq` refused by its quota).
pub(super) fn quota_step(r: &mut Reply) -> Result<QuotaStep, StoreError> {
    Ok(match r.string()?.as_str() {
        "ok" => QuotaStep::Done(QuotaOutcome::Admitted),
        "per_minute" => QuotaStep::Done(QuotaOutcome::PerMinute { retry_after_ms: r.int()?.max(0) as u64 }),
        "inflight" => {
            let now = r.int()?;
            let mut holders = Vec::with_capacity(r.len() / 2);
            while r.len() > 0 {
                let member = r.string()?;
                holders.push((member, (now - r.int()?).max(0) as u64));
            }
            QuotaStep::Done(QuotaOutcome::InFlight { holders })
        }
        "minute" => QuotaStep::Minute(r.int()?.max(0) as u64),
        other => return Err(r.bad(format!("unknown status {other}"))),
    })
}

/// The clock minute by this process's clock; Redis's TIME decides, and corrects it.
pub(super) fn local_minute() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 60).unwrap_or_default()
}

impl Store {
    /// Whether a send's quota slot can be taken in its enqueue's call: on a single Redis, where
    /// the tenant's quota keys and the session's can be declared together.
    pub fn quota_with_enqueue(&self) -> bool {
        !self.redis.is_clustered()
    }

    /// Takes an in-flight slot for `member` and counts it in the current minute.
    pub async fn quota_acquire(
        &self,
        tenant: &str,
        member: &str,
        max_inflight: u64,
        max_per_minute: u64,
        stale_ms: u64,
        max_listed: u64,
    ) -> Result<QuotaOutcome, StoreError> {
        let mut minute = local_minute();
        // The per-minute counter is a key of its own, named by the minute, so it can be declared;
        // when this process's clock names another minute than Redis's, the function says which,
        // and the second call uses it.
        for _ in 0..2 {
            let keys = vec![self.keys.quota_inflight(tenant), self.keys.quota_minute(tenant, minute)];
            let args: Vec<Value> = vec![
                member.into(),
                max_inflight.to_string().into(),
                max_per_minute.to_string().into(),
                stale_ms.to_string().into(),
                max_listed.to_string().into(),
            ];
            let v: Value = self.redis.client().fcall(function::QUOTA_ACQUIRE, keys, args).await?;
            match quota_step(&mut Reply::new(function::QUOTA_ACQUIRE, v)?)? {
                QuotaStep::Done(outcome) => return Ok(outcome),
                QuotaStep::Minute(m) => minute = m,
            }
        }
        Err(StoreError::Reply { function: function::QUOTA_ACQUIRE, detail: "the clock minute kept changing".into() })
    }

    /// Frees the slots of `members`; with `uncount`, also takes their turns back from this
    /// minute's count (the minute by this process's clock).
    pub async fn quota_release(&self, tenant: &str, uncount: bool, members: &[String]) -> Result<u64, StoreError> {
        let keys = vec![self.keys.quota_inflight(tenant), self.keys.quota_minute(tenant, local_minute())];
        let mut args: Vec<Value> = vec![if uncount { "1" } else { "0" }.into()];
        args.extend(members.iter().map(|m| Value::from(m.as_str())));
        let n: i64 = self.redis.client().fcall(function::QUOTA_RELEASE, keys, args).await?;
        Ok(n.max(0) as u64)
    }
}

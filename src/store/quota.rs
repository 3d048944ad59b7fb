//! [`Store`] calls of the tenant quota functions (`cf2_quota_*` in `lua/chatfleet.lua`).
//!
//! Kept apart from the session ops because their keys live in the tenant's own slot
//! (`{t:<tenant>}`), never in a partition's: callers must not expect them to be atomic with a
//! session op. Both are safe to resend: acquire is idempotent by member (a member that holds a
//! slot is admitted again and counted once), release removes and uncounts only what is there.

use std::time::{SystemTime, UNIX_EPOCH};

use fred::prelude::*;

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

/// The clock minute by this process's clock; Redis's TIME decides, and corrects it.
fn local_minute() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 60).unwrap_or_default()
}

impl Store {
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
            let v: Value = self.redis.client().fcall("cf2_quota_acquire", keys, args).await?;
            let mut r = Reply::new("cf2_quota_acquire", v)?;
            match r.string()?.as_str() {
                "ok" => return Ok(QuotaOutcome::Admitted),
                "per_minute" => return Ok(QuotaOutcome::PerMinute { retry_after_ms: r.int()?.max(0) as u64 }),
                "inflight" => {
                    let now = r.int()?;
                    let mut holders = Vec::with_capacity(r.len() / 2);
                    while r.len() > 0 {
                        let member = r.string()?;
                        holders.push((member, (now - r.int()?).max(0) as u64));
                    }
                    return Ok(QuotaOutcome::InFlight { holders });
                }
                "minute" => minute = r.int()?.max(0) as u64,
                other => return Err(r.bad(format!("unknown status {other}"))),
            }
        }
        Err(StoreError::Reply { function: "cf2_quota_acquire", detail: "the clock minute kept changing".into() })
    }

    /// Frees the slots of `members`; with `uncount`, also takes their turns back from this
    /// minute's count (the minute by this process's clock).
    pub async fn quota_release(&self, tenant: &str, uncount: bool, members: &[String]) -> Result<u64, StoreError> {
        let keys = vec![self.keys.quota_inflight(tenant), self.keys.quota_minute(tenant, local_minute())];
        let mut args: Vec<Value> = vec![if uncount { "1" } else { "0" }.into()];
        args.extend(members.iter().map(|m| Value::from(m.as_str())));
        let n: i64 = self.redis.client().fcall("cf2_quota_release", keys, args).await?;
        Ok(n.max(0) as u64)
    }
}

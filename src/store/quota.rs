//! [`Store`] calls of the tenant quota functions (`cf1_quota_*` in `lua/chatfleet.lua`).
//!
//! Kept apart from the session functions because their keys live in the tenant's own slot
//! (`{t:<tenant>}`), never in a partition's: callers must not expect them to be atomic with a
//! session function.

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

impl Store {
    /// Takes an in-flight slot for `member` and counts it in the current minute.
    pub async fn quota_acquire(
        &self,
        quota_base: &str,
        member: &str,
        max_inflight: u64,
        max_per_minute: u64,
        stale_ms: u64,
        max_listed: u64,
    ) -> Result<QuotaOutcome, StoreError> {
        let args: Vec<Value> = vec![
            member.into(),
            max_inflight.to_string().into(),
            max_per_minute.to_string().into(),
            stale_ms.to_string().into(),
            max_listed.to_string().into(),
        ];
        let v: Value = self.redis().client().fcall("cf1_quota_acquire", vec![quota_base], args).await?;
        let mut r = Reply::new("cf1_quota_acquire", v)?;
        match r.string()?.as_str() {
            "ok" => Ok(QuotaOutcome::Admitted),
            "per_minute" => Ok(QuotaOutcome::PerMinute { retry_after_ms: r.int()?.max(0) as u64 }),
            "inflight" => {
                let now = r.int()?;
                let mut holders = Vec::with_capacity(r.len() / 2);
                while r.len() > 0 {
                    let member = r.string()?;
                    holders.push((member, (now - r.int()?).max(0) as u64));
                }
                Ok(QuotaOutcome::InFlight { holders })
            }
            other => Err(r.bad(format!("unknown status {other}"))),
        }
    }

    /// Frees the slots of `members`; with `uncount`, also takes one turn back from this minute.
    pub async fn quota_release(&self, quota_base: &str, uncount: bool, members: &[String]) -> Result<u64, StoreError> {
        let mut args: Vec<Value> = vec![if uncount { "1" } else { "0" }.into()];
        args.extend(members.iter().map(|m| Value::from(m.as_str())));
        let n: i64 = self.redis().client().fcall("cf1_quota_release", vec![quota_base], args).await?;
        Ok(n.max(0) as u64)
    }

    /// The turn an earlier send with `client_msg_id` created in this session, if any: a plain
    /// read of the session's `<base>:dedupe` hash. Lets a retried send get its ack even while new
    /// sends are refused.
    pub async fn known_send(&self, session_base: &str, client_msg_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.redis().client().hget(format!("{session_base}:dedupe"), client_msg_id).await?)
    }

    /// The status of a turn (`queued`, `running`, `done`, …), or `None` when its record is gone.
    /// A plain read of the turn hash that `lua/chatfleet.lua` keeps at `<base>:turn:<tid>`.
    pub async fn turn_status(&self, session_base: &str, turn_id: &str) -> Result<Option<String>, StoreError> {
        let key = format!("{session_base}:turn:{turn_id}");
        Ok(self.redis().client().hget(key, "status").await?)
    }
}

//! Per-tenant quotas shared by every gateway through Redis: turns in flight (queued or running)
//! and turns admitted per clock minute.
//!
//! A send takes a slot with `cf3_quota_acquire` before its turn is enqueued. The quota keys carry
//! the tenant's own hash tag (`{t:<tenant>}`), never a partition's, so in Redis Cluster the acquire
//! and the enqueue are two commands on two slots, not one script. On a single Redis the enqueue's
//! own call takes the slot (the `enq` op declares the quota keys too), so a send is one round
//! trip, and the split below does not arise; the turn's `finish` frees the slot in its own call
//! there too. Slots are also released lazily: when
//! a tenant is at its limit, the oldest holders are checked against their turns' status (which the
//! workers write) and the ended ones are freed. A holder that is never checked again expires after
//! `quota.stale_ms`. The cost of this split is a small inconsistency, documented in
//! docs/security.md: a gateway that dies between acquire and enqueue holds a slot until one of
//! those two frees it.

mod settings;

use crate::keys::SessionKeys;
use crate::store::{QuotaOutcome, Store, StoreError};

/// Turn statuses after which a turn holds no slot (mirrors `TERMINAL` in lua/chatfleet.lua).
const ENDED: [&str; 4] = ["done", "error", "cancelled", "dead"];

pub use settings::{QuotaSettings, TenantQuota};

/// A holder with no turn record is freed only when older than this: its gateway may still be
/// between acquire and enqueue (bounded by the Redis command timeout, far below this).
const ENQUEUE_GRACE_MS: u64 = 30_000;

/// Why a send was refused by its tenant's quota.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("your organisation has {limit} turns in flight, its limit")]
    InFlight { limit: u64 },
    #[error("your organisation used its turns for this minute")]
    PerMinute { retry_after_ms: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held slot, to hand back with [`Quotas::release`] when the send stored no new turn.
#[derive(Debug)]
pub struct Slot {
    tenant: String,
    member: String,
}

/// The quota checks of one process.
#[derive(Clone)]
pub struct Quotas {
    settings: QuotaSettings,
}

impl Quotas {
    pub fn new(settings: QuotaSettings) -> Self {
        Self { settings }
    }

    /// Takes a slot for `turn_id` of `session`, freeing ended holders once if the tenant is full.
    pub async fn acquire(
        &self,
        store: &Store,
        tenant: &str,
        session: &SessionKeys,
        turn_id: &str,
    ) -> Result<Slot, QuotaError> {
        let (max_inflight, per_minute) = self.settings.limits(tenant);
        let slot = Slot { tenant: tenant.to_string(), member: member(&session.base, turn_id) };
        let s = &self.settings;
        for attempt in 0..2 {
            let outcome = store
                .quota_acquire(&slot.tenant, &slot.member, max_inflight, per_minute, s.stale_ms, s.reconcile_batch)
                .await?;
            match outcome {
                QuotaOutcome::Admitted => return Ok(slot),
                QuotaOutcome::PerMinute { retry_after_ms } => return Err(QuotaError::PerMinute { retry_after_ms }),
                QuotaOutcome::InFlight { holders } if attempt == 0 => {
                    if self.free_ended(store, &slot.tenant, holders).await? == 0 {
                        break;
                    }
                }
                QuotaOutcome::InFlight { .. } => break,
            }
        }
        Err(QuotaError::InFlight { limit: max_inflight })
    }

    /// The slot of `turn_id` of `session`, to take in the enqueue's own call
    /// ([`Store::enqueue_turn_with_quota`], where [`Store::quota_with_enqueue`]): the member
    /// string is returned with it, since the ask borrows it.
    pub fn ask_member(session: &SessionKeys, turn_id: &str) -> String {
        member(&session.base, turn_id)
    }

    /// The ask for `member` of `tenant`, with the tenant's limits.
    pub fn ask<'a>(&self, tenant: &'a str, member: &'a str) -> crate::store::QuotaAsk<'a> {
        let (max_inflight, max_per_minute) = self.settings.limits(tenant);
        let s = &self.settings;
        crate::store::QuotaAsk {
            tenant,
            member,
            max_inflight,
            max_per_minute,
            stale_ms: s.stale_ms,
            max_listed: s.reconcile_batch,
        }
    }

    /// After an enqueue its quota refused (first try): `Ok(true)` when ended holders were freed
    /// and the enqueue may try once more, else the refusal to give the client.
    pub async fn after_refusal(
        &self,
        store: &Store,
        tenant: &str,
        outcome: QuotaOutcome,
        first: bool,
    ) -> Result<bool, QuotaError> {
        match outcome {
            QuotaOutcome::Admitted => Ok(true),
            QuotaOutcome::PerMinute { retry_after_ms } => Err(QuotaError::PerMinute { retry_after_ms }),
            QuotaOutcome::InFlight { holders } => {
                if first && self.free_ended(store, tenant, holders).await? > 0 {
                    return Ok(true);
                }
                Err(QuotaError::InFlight { limit: self.settings.limits(tenant).0 })
            }
        }
    }

    /// Hands a slot back; `uncount` also takes the turn back from this minute's count.
    pub async fn release(&self, store: &Store, slot: Slot, uncount: bool) -> Result<(), StoreError> {
        store.quota_release(&slot.tenant, uncount, &[slot.member]).await.map(|_| ())
    }

    /// Frees the slot of a turn that ended: in Redis Cluster the worker calls this after the
    /// turn's end is written, so a tenant's slots follow its turns instead of waiting for
    /// reconciliation (on a single Redis the `finish` op frees it in its own call). Harmless when
    /// the slot was already freed (or never taken: quotas off).
    pub async fn release_ended(&self, store: &Store, session_base: &str, turn_id: &str) -> Result<(), StoreError> {
        let tenant = crate::keys::tenant_of(session_base);
        store.quota_release(tenant, false, &[member(session_base, turn_id)]).await.map(|_| ())
    }

    /// Frees the holders whose turns have ended (or whose records are gone); returns how many.
    async fn free_ended(&self, store: &Store, tenant: &str, holders: Vec<(String, u64)>) -> Result<u64, StoreError> {
        let checks = holders.iter().map(|(m, _)| async move {
            match m.rsplit_once('|') {
                Some((session_base, tid)) => store.turn_status(session_base, tid).await,
                None => Ok(None),
            }
        });
        let statuses = futures::future::try_join_all(checks).await?;
        let ended: Vec<String> = holders
            .into_iter()
            .zip(statuses)
            .filter(|((_, age), status)| match status.as_deref() {
                Some(s) => ENDED.contains(&s),
                None => *age > ENQUEUE_GRACE_MS,
            })
            .map(|((m, _), _)| m)
            .collect();
        if ended.is_empty() {
            return Ok(0);
        }
        store.quota_release(tenant, false, &ended).await
    }
}

/// A turn's member in its tenant's in-flight set.
fn member(session_base: &str, turn_id: &str) -> String {
    format!("{session_base}|{turn_id}")
}

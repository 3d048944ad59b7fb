//! `[quota]`: per-tenant limits and their overrides (part of the settings tree, see
//! [`crate::settings_base`]).

use std::collections::HashMap;

use serde::Deserialize;

use crate::settings_base::SettingsError;

/// `[quota]`: per-tenant limits, with per-tenant overrides.
#[derive(Debug, Clone, Deserialize)]
pub struct QuotaSettings {
    /// Turns of one tenant queued or running at once, across the fleet; 0 turns the limit off.
    pub max_inflight_turns: u64,
    /// Turns one tenant may start per clock minute, across the fleet; 0 turns the limit off.
    pub turns_per_minute: u64,
    /// A slot not freed by then (a lost gateway, a turn that never ended) is dropped. Keep it
    /// above `worker.turn_timeout_ms` plus the longest queue wait.
    pub stale_ms: u64,
    /// Holders checked against their turns' status when a tenant is at its limit.
    pub reconcile_batch: u64,
    /// Overrides by tenant name (`[quota.tenants.acme]`).
    #[serde(default)]
    pub tenants: HashMap<String, TenantQuota>,
}

/// A tenant's own limits; unset fields use the `[quota]` defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TenantQuota {
    pub max_inflight_turns: Option<u64>,
    pub turns_per_minute: Option<u64>,
}

impl QuotaSettings {
    pub fn validate(&self, turn_timeout_ms: u64) -> Result<(), SettingsError> {
        if self.stale_ms <= turn_timeout_ms {
            return Err(SettingsError::Invalid {
                key: "quota.stale_ms",
                reason: "must exceed worker.turn_timeout_ms, or running turns lose their slot".into(),
            });
        }
        if !(1..=1000).contains(&self.reconcile_batch) {
            return Err(SettingsError::Invalid { key: "quota.reconcile_batch", reason: "must be 1..=1000".into() });
        }
        Ok(())
    }

    pub(crate) fn limits(&self, tenant: &str) -> (u64, u64) {
        let t = self.tenants.get(tenant);
        (
            t.and_then(|t| t.max_inflight_turns).unwrap_or(self.max_inflight_turns),
            t.and_then(|t| t.turns_per_minute).unwrap_or(self.turns_per_minute),
        )
    }
}

//! `[gateway.admission]`: when a gateway refuses new sends because the queue is too long or too
//! old (part of the settings tree, see [`crate::settings_base`]; the logic is in `admission`).

use serde::Deserialize;

use crate::settings_base::SettingsError;

/// `[gateway.admission]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdmissionSettings {
    /// Turns waiting (not yet claimed by a worker) in one partition above which new sends to that
    /// partition are refused with `degraded`; 0 turns this check off.
    pub max_waiting_turns: u64,
    /// Age of a partition's oldest waiting turn above which new sends are refused; 0 turns this
    /// check off.
    pub max_wait_ms: u64,
    /// How often each gateway re-reads the queue state of every partition.
    pub refresh_ms: u64,
    /// Lower bound of `retry_after_ms`.
    pub min_retry_ms: u64,
    /// Upper bound of `retry_after_ms` (also the hint when no throughput was measured).
    pub max_retry_ms: u64,
}

impl AdmissionSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.refresh_ms < 100 {
            return Err(SettingsError::Invalid {
                key: "gateway.admission.refresh_ms",
                reason: "must be at least 100".into(),
            });
        }
        if self.min_retry_ms == 0 || self.min_retry_ms > self.max_retry_ms {
            return Err(SettingsError::Invalid {
                key: "gateway.admission.min_retry_ms",
                reason: "must be 1..=gateway.admission.max_retry_ms".into(),
            });
        }
        Ok(())
    }
}

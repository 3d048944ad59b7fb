//! Per-connection and per-user limits of one gateway: frames per second with a burst (`governor`),
//! rejected frames in a row, HTTP requests per user, and open connections per user.
//!
//! These are local to a gateway on purpose: they protect this process, and a client that spreads
//! over gateways is bounded by the tenant quotas in Redis ([`crate::quota`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

use crate::settings_base::SettingsError;

/// `[gateway.limits]`.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Frames per second one WebSocket may send, sustained.
    pub messages_per_sec: u32,
    /// Frames one WebSocket may send at once above the sustained rate.
    pub burst: u32,
    /// HTTP sends and cancels per second of one user on one gateway (with `burst`); jwt mode only,
    /// since in dev mode every client is the same user.
    pub http_requests_per_sec: u32,
    /// Open connections (all transports) of one user on one gateway; jwt mode only.
    pub max_connections_per_user: usize,
    /// Refused frames in a row after which a WebSocket is closed with 4029.
    pub max_rejected_frames: u32,
}

impl LimitSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &'static str| Err(SettingsError::Invalid { key, reason: "must be at least 1".into() });
        if self.messages_per_sec == 0 {
            return bad("gateway.limits.messages_per_sec");
        }
        if self.burst == 0 {
            return bad("gateway.limits.burst");
        }
        if self.http_requests_per_sec == 0 {
            return bad("gateway.limits.http_requests_per_sec");
        }
        if self.max_connections_per_user == 0 {
            return bad("gateway.limits.max_connections_per_user");
        }
        if self.max_rejected_frames == 0 {
            return bad("gateway.limits.max_rejected_frames");
        }
        Ok(())
    }

    fn quota(&self, per_sec: u32) -> Quota {
        // validate() keeps both at least 1; max(1) keeps unvalidated test settings from panicking.
        let nz = |v: u32| NonZeroU32::new(v.max(1)).expect("at least 1");
        Quota::per_second(nz(per_sec)).allow_burst(nz(self.burst))
    }
}

/// What a connection's limiter says about one incoming frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse this frame; try again after this long.
    Limited {
        retry_after_ms: u64,
    },
}

/// The frame limits of one WebSocket.
pub struct FrameLimiter {
    rate: DefaultDirectRateLimiter,
    rejected_in_a_row: u32,
    max_rejected: u32,
}

impl FrameLimiter {
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            rate: DefaultDirectRateLimiter::direct(s.quota(s.messages_per_sec)),
            rejected_in_a_row: 0,
            max_rejected: s.max_rejected_frames,
        }
    }

    /// Counts one incoming data frame against the rate.
    pub fn check(&self) -> Verdict {
        match self.rate.check() {
            Ok(()) => Verdict::Accept,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict::Limited { retry_after_ms: retry_ms(wait) }
            }
        }
    }

    /// Records how a frame was handled; true when the connection has now been refused too often
    /// in a row and must be closed.
    pub fn record(&mut self, refused: bool) -> bool {
        self.rejected_in_a_row = if refused { self.rejected_in_a_row + 1 } else { 0 };
        self.rejected_in_a_row >= self.max_rejected
    }
}

fn retry_ms(wait: Duration) -> u64 {
    (wait.as_millis() as u64).max(1)
}

/// Limits shared by the connections of one gateway.
pub struct GatewayLimits {
    settings: LimitSettings,
    /// Open connections per (tenant, user).
    per_user: Arc<Mutex<HashMap<(String, String), usize>>>,
    http: DefaultKeyedRateLimiter<(String, String)>,
}

/// A user's connection slot; frees itself when dropped.
pub struct UserSlot {
    key: (String, String),
    map: Arc<Mutex<HashMap<(String, String), usize>>>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl GatewayLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            http: DefaultKeyedRateLimiter::keyed(settings.quota(settings.http_requests_per_sec)),
            settings: settings.clone(),
            per_user: Arc::default(),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Takes one of the user's connection slots, or `None` when all are open.
    pub fn connect(&self, tenant: &str, user: &str) -> Option<UserSlot> {
        let key = (tenant.to_string(), user.to_string());
        let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= self.settings.max_connections_per_user {
            return None;
        }
        *n += 1;
        Some(UserSlot { key, map: self.per_user.clone() })
    }

    /// Counts one HTTP request of the user; `Err(retry_after_ms)` when over the rate.
    pub fn http_request(&self, tenant: &str, user: &str) -> Result<(), u64> {
        self.http
            .check_key(&(tenant.to_string(), user.to_string()))
            .map_err(|nu| retry_ms(nu.wait_time_from(DefaultClock::default().now())))
    }

    /// Forgets idle users' HTTP rate state, so the map stays as large as the active users.
    pub fn forget_idle(&self) {
        self.http.retain_recent();
        self.http.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            messages_per_sec: 1,
            burst: 3,
            http_requests_per_sec: 1,
            max_connections_per_user: 2,
            max_rejected_frames: 2,
        }
    }

    #[test]
    fn a_burst_passes_then_frames_are_limited_with_a_retry_hint() {
        let mut l = FrameLimiter::new(&settings());
        for _ in 0..3 {
            assert_eq!(l.check(), Verdict::Accept);
        }
        let Verdict::Limited { retry_after_ms } = l.check() else { panic!("the 4th frame is limited") };
        assert!((1..=1000).contains(&retry_after_ms), "{retry_after_ms}");
        assert!(!l.record(true));
        assert!(!l.record(false), "an accepted frame resets the count");
        assert!(!l.record(true));
        assert!(l.record(true), "two refusals in a row close");
    }

    #[test]
    fn user_slots_are_bounded_and_freed_on_drop() {
        let g = GatewayLimits::new(&settings());
        let a = g.connect("t", "u").unwrap();
        let _b = g.connect("t", "u").unwrap();
        assert!(g.connect("t", "u").is_none());
        assert!(g.connect("t", "other").is_some(), "another user is unaffected");
        assert!(g.connect("t2", "u").is_some(), "the same user name in another tenant is someone else");
        drop(a);
        assert!(g.connect("t", "u").is_some());
    }
}

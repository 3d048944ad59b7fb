//! Per-connection and per-user limits of one gateway: frames per second with a burst (`governor`),
//! rejected frames in a row, HTTP requests per user, open connections per user, and session opens
//! (WebSocket connects, SSE streams, long-polls) per client IP and per user.
//!
//! These are local to a gateway on purpose: they protect this process, and a client that spreads
//! over gateways is bounded by the tenant quotas in Redis ([`crate::quota`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use governor::clock::{Clock, QuantaClock, QuantaInstant};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
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
    /// Session opens (WebSocket connects, SSE streams, long-poll requests) per second from one
    /// client IP address (an IPv6 /64 counts as one), sustained; jwt mode only. Every open
    /// creates or refreshes session keys in Redis for `session.ttl_secs`.
    pub opens_per_sec_per_ip: u32,
    /// Session opens per second of one user, sustained; jwt mode only.
    pub opens_per_sec_per_user: u32,
    /// Opens allowed at once above the sustained rates (per IP and per user).
    pub opens_burst: u32,
    /// Proxies in front of the gateway that each append the client's address to
    /// `X-Forwarded-For`. 0: the client is the TCP peer. N: the client is the Nth address from
    /// the right. Set it only when clients can reach the gateway through those proxies alone, or a
    /// client can name any address it likes.
    pub trusted_proxy_hops: usize,
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
        if self.opens_per_sec_per_ip == 0 {
            return bad("gateway.limits.opens_per_sec_per_ip");
        }
        if self.opens_per_sec_per_user == 0 {
            return bad("gateway.limits.opens_per_sec_per_user");
        }
        if self.opens_burst == 0 {
            return bad("gateway.limits.opens_burst");
        }
        Ok(())
    }

    fn quota(&self, per_sec: u32) -> Quota {
        quota(per_sec, self.burst)
    }
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    // validate() keeps both at least 1; max(1) keeps unvalidated test settings from panicking.
    let nz = |v: u32| NonZeroU32::new(v.max(1)).expect("at least 1");
    Quota::per_second(nz(per_sec)).allow_burst(nz(burst))
}

/// Which limit refused an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenScope {
    Ip,
    User,
}

impl OpenScope {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::User => "user",
        }
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

/// The process's one clock for rate limits. Building a `quanta` clock probes the CPU (CPUID) and
/// reads its calibration; one built per socket's limiter cost 2.4 % of the gateway's CPU in a
/// reconnect storm (docs/benchmarks.md), so it is built once and every limiter borrows it.
#[derive(Debug, Clone, Copy)]
pub struct SharedClock(&'static QuantaClock);

impl SharedClock {
    pub fn get() -> Self {
        static CLOCK: OnceLock<QuantaClock> = OnceLock::new();
        Self(CLOCK.get_or_init(QuantaClock::default))
    }
}

impl Clock for SharedClock {
    type Instant = QuantaInstant;

    fn now(&self) -> QuantaInstant {
        self.0.now()
    }
}

/// One WebSocket's frame rate, on the shared clock (a pointer, not a clock, per socket).
type FrameRate = RateLimiter<NotKeyed, InMemoryState, SharedClock, NoOpMiddleware<QuantaInstant>>;

/// The frame limits of one WebSocket.
pub struct FrameLimiter {
    rate: FrameRate,
    rejected_in_a_row: u32,
    max_rejected: u32,
}

impl FrameLimiter {
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            rate: RateLimiter::direct_with_clock(s.quota(s.messages_per_sec), SharedClock::get()),
            rejected_in_a_row: 0,
            max_rejected: s.max_rejected_frames,
        }
    }

    /// Counts one incoming data frame against the rate.
    pub fn check(&self) -> Verdict {
        match self.rate.check() {
            Ok(()) => Verdict::Accept,
            Err(not_until) => {
                let wait = not_until.wait_time_from(SharedClock::get().now());
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
    opens_ip: DefaultKeyedRateLimiter<IpAddr>,
    opens_user: DefaultKeyedRateLimiter<(String, String)>,
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
            opens_ip: DefaultKeyedRateLimiter::keyed(quota(settings.opens_per_sec_per_ip, settings.opens_burst)),
            opens_user: DefaultKeyedRateLimiter::keyed(quota(settings.opens_per_sec_per_user, settings.opens_burst)),
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
            .map_err(|nu| retry_ms(nu.wait_time_from(SharedClock::get().now())))
    }

    /// Counts one session open from `ip` (when known) by the user; `Err` names the limit that
    /// refused it and when to retry.
    pub fn open(&self, ip: Option<IpAddr>, tenant: &str, user: &str) -> Result<(), (OpenScope, u64)> {
        let wait = |nu: governor::NotUntil<_>| retry_ms(nu.wait_time_from(SharedClock::get().now()));
        if let Some(ip) = ip {
            self.opens_ip.check_key(&rate_key(ip)).map_err(|nu| (OpenScope::Ip, wait(nu)))?;
        }
        self.opens_user.check_key(&(tenant.to_string(), user.to_string())).map_err(|nu| (OpenScope::User, wait(nu)))
    }

    /// Forgets idle users' and addresses' rate state, so the maps stay as large as the active set.
    pub fn forget_idle(&self) {
        self.http.retain_recent();
        self.http.shrink_to_fit();
        self.opens_ip.retain_recent();
        self.opens_ip.shrink_to_fit();
        self.opens_user.retain_recent();
        self.opens_user.shrink_to_fit();
    }
}

/// The rate-limit key of a client address: an IPv6 client usually holds a whole /64, so the /64
/// is one key; an IPv4-mapped IPv6 address is its IPv4 address.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
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
            opens_per_sec_per_ip: 1,
            opens_per_sec_per_user: 1,
            opens_burst: 2,
            trusted_proxy_hops: 0,
        }
    }

    #[test]
    fn opens_are_limited_per_address_and_per_user_with_a_retry_hint() {
        let g = GatewayLimits::new(&settings());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(g.open(Some(ip), "t", "a").is_ok());
        assert!(g.open(Some(ip), "t", "a").is_ok());
        let (scope, retry) = g.open(Some(ip), "t", "b").unwrap_err();
        assert_eq!(scope, OpenScope::Ip, "the address is out of opens, whoever asks");
        assert!((1..=1000).contains(&retry), "{retry}");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(g.open(Some(other), "t", "a").unwrap_err().0, OpenScope::User, "user a spent its burst");
        assert!(g.open(Some(other), "t", "b").is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_a_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
        assert_ne!(rate_key(a), rate_key(c));
        assert_eq!(rate_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
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

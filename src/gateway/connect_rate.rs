//! Admission of new connections at a bounded rate (`gateway.connects_per_sec` with
//! `gateway.connect_burst`), for reconnect storms: after a deploy or a network blip every client
//! reconnects at once. Past the rate a connection is refused before any work is done for it
//! (no upgrade, no Redis call), with a retry hint that spreads the retries over the time the
//! burst takes to drain, so they do not come back together.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use rand::Rng;

/// The connect rate of one gateway.
pub struct ConnectRate {
    limiter: DefaultDirectRateLimiter,
    /// How long a full burst takes to drain at the sustained rate: the spread of retry hints.
    spread_ms: u64,
}

impl ConnectRate {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let nz = |v: u32| NonZeroU32::new(v.max(1)).expect("at least 1");
        let quota = Quota::per_second(nz(per_sec)).allow_burst(nz(burst));
        let spread_ms = (u64::from(burst.max(1)) * 1000 / u64::from(per_sec.max(1))).max(1);
        Self { limiter: DefaultDirectRateLimiter::direct(quota), spread_ms }
    }

    /// `Ok` when a connection may be admitted now, else the milliseconds to wait before retrying.
    pub fn admit(&self) -> Result<(), u64> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(retry_hint(wait, self.spread_ms, rand::rng().random_range(0..=self.spread_ms)))
            }
        }
    }
}

/// The earliest a token is free, plus this client's share of the spread.
fn retry_hint(wait: Duration, spread_ms: u64, jitter_ms: u64) -> u64 {
    (wait.as_millis() as u64).max(1) + jitter_ms.min(spread_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_and_the_rest_refused_with_hints_spread_over_the_drain_time() {
        let rate = ConnectRate::new(100, 50);
        let admitted = (0..200).filter(|_| rate.admit().is_ok()).count();
        // The burst, plus whatever the clock refilled while the loop ran (well under 100 ms).
        assert!((50..60).contains(&admitted), "admitted {admitted}");
        let hints: Vec<u64> = (0..200).filter_map(|_| rate.admit().err()).collect();
        assert!(hints.len() > 190);
        // A burst of 50 at 100/s drains in 500 ms: hints fall within it, and are not all alike.
        assert!(hints.iter().all(|&h| (1..=511).contains(&h)), "{hints:?}");
        let (lo, hi) = (hints.iter().min().unwrap(), hints.iter().max().unwrap());
        assert!(hi - lo > 100, "spread from {lo} to {hi}");
    }

    #[test]
    fn the_hint_is_the_wait_plus_a_bounded_share_of_the_spread() {
        assert_eq!(retry_hint(Duration::from_micros(200), 400, 0), 1);
        assert_eq!(retry_hint(Duration::from_millis(30), 400, 100), 130);
        assert_eq!(retry_hint(Duration::from_millis(30), 400, 9_000), 430);
    }
}

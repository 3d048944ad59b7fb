//! Canary rollouts: which side of a routing rule's split a session is on.
//!
//! A rule's `[routing.rules.canary]` sends `percent` of the sessions the rule matches to a
//! variant (another chain, another system prompt). The side is decided by a fixed hash of the
//! session id, never by chance or by the process, so:
//! - a conversation keeps its variant for its whole life, on every worker, across restarts and
//!   releases (the hash is FNV-1a 64, as for partitions; `std::hash` is not stable
//!   across Rust releases, which would move sessions between sides on an upgrade; FNV-1a is
//!   defined by two constants);
//! - raising the percentage only adds sessions to the variant (a session's bucket does not
//!   change, the threshold does), and lowering it to 0 is the rollback;
//! - the variant's name salts the hash, so two canaries do not pick the same sessions.

use super::settings::{Canary, RoutingSettings};
use crate::model::RouteHints;
use crate::settings_base::SettingsError;

/// The `variant` label of turns that are not in a canary.
pub const CONTROL: &str = "control";
/// Buckets of the split: percentages have two decimals.
const BUCKETS: u64 = 10_000;

/// Where a turn goes: the rule that matched (if any), its chain, and its canary variant when the
/// session is on the variant's side.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// Index of the matching rule in `routing.rules`; `None` for the default chain.
    pub rule: Option<usize>,
    pub chain: &'a [String],
    pub variant: Option<&'a Canary>,
}

impl Route<'_> {
    /// The `variant` metric label: the canary's name, or [`CONTROL`].
    pub fn label(&self) -> &str {
        self.variant.map_or(CONTROL, |c| c.name.as_str())
    }
}

impl RoutingSettings {
    /// The route of a turn: the first rule that matches, else the default chain; inside a rule
    /// with a canary, the variant when the session's bucket falls under its percentage.
    pub fn route(&self, h: &RouteHints) -> Route<'_> {
        let Some((i, rule)) = self.rules.iter().enumerate().find(|(_, r)| r.matches(h)) else {
            return Route { rule: None, chain: &self.default, variant: None };
        };
        let variant = rule.canary.as_ref().filter(|c| in_canary(c, &h.session_id));
        let chain = match variant {
            Some(c) if !c.chain.is_empty() => &c.chain,
            _ => &rule.chain,
        };
        Route { rule: Some(i), chain, variant }
    }
}

/// True when `session_id` is on the variant's side of `c`'s split.
pub fn in_canary(c: &Canary, session_id: &str) -> bool {
    bucket(&c.name, session_id) < threshold(c.percent)
}

/// The session's bucket in 0..10000 for the canary named `salt` ([`crate::keys::fnv1a`], the
/// hash that already places sessions on partitions, for the same reason: it never changes).
pub fn bucket(salt: &str, session_id: &str) -> u64 {
    crate::keys::fnv1a(&[salt.as_bytes(), session_id.as_bytes()]) % BUCKETS
}

/// Buckets on the variant's side for `percent`.
fn threshold(percent: f64) -> u64 {
    (percent.clamp(0.0, 100.0) * (BUCKETS as f64 / 100.0)).round() as u64
}

/// Checks a canary's name and percentage.
pub fn validate(c: &Canary) -> Result<(), SettingsError> {
    let ok_name = (1..=32).contains(&c.name.len())
        && c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && c.name != CONTROL;
    if !ok_name {
        let reason = "1-32 characters of [a-z0-9_-], not `control`".into();
        return Err(SettingsError::Invalid { key: "routing.rules.canary.name", reason });
    }
    if !(0.0..=100.0).contains(&c.percent) {
        return Err(SettingsError::Invalid { key: "routing.rules.canary.percent", reason: "must be 0..=100".into() });
    }
    if c.system_prompt.is_none() && c.chain.is_empty() {
        let reason = "a canary needs a chain, a system_prompt or both".into();
        return Err(SettingsError::Invalid { key: "routing.rules.canary", reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::settings::RouteRule;

    fn canary(percent: f64) -> Canary {
        Canary { name: "v2".into(), percent, chain: vec!["b".into()], ..Default::default() }
    }

    fn routing(percent: f64) -> RoutingSettings {
        let rule = RouteRule { chain: vec!["a".into()], canary: Some(canary(percent)), ..Default::default() };
        RoutingSettings { default: vec!["d".into()], rules: vec![rule] }
    }

    /// 1,000 sessions split within 4 standard deviations of the binomial: for n = 1000 and
    /// p = 0.1, sigma = sqrt(n p (1-p)) = 9.49, so 100 ± 37.9; for p = 0.5, 500 ± 63.2.
    #[test]
    fn a_thousand_sessions_split_within_four_sigma_of_the_percentage() {
        for percent in [10.0, 50.0, 1.0] {
            let r = routing(percent);
            let n = 1000.0;
            let p = percent / 100.0;
            let sigma = (n * p * (1.0 - p)).sqrt();
            let on_variant = |_: &i32| {
                let h = RouteHints { session_id: uuid::Uuid::new_v4().to_string(), ..Default::default() };
                r.route(&h).variant.is_some()
            };
            let hits = (0..1000).filter(on_variant).count() as f64;
            assert!((hits - n * p).abs() <= 4.0 * sigma, "{percent}%: {hits} of 1000");
        }
    }

    #[test]
    fn a_session_keeps_its_side_and_raising_the_percentage_only_adds_sessions() {
        let ids: Vec<String> = (0..2000).map(|i| format!("session-{i}")).collect();
        let side = |percent: f64| -> Vec<bool> {
            let r = routing(percent);
            ids.iter()
                .map(|id| r.route(&RouteHints { session_id: id.clone(), ..Default::default() }).variant.is_some())
                .collect()
        };
        // The same answer on every call (and, the hash being fixed, on every process).
        assert_eq!(side(20.0), side(20.0));
        let (low, high) = (side(20.0), side(60.0));
        assert!(low.iter().zip(&high).all(|(l, h)| !l || *h), "a session at 20% must stay in at 60%");
        assert!(side(0.0).iter().all(|s| !s), "0% is the rollback");
        assert!(side(100.0).iter().all(|s| *s));
        // A fixed session's bucket is a constant of the algorithm: a change of hash would move it.
        assert_eq!(bucket("v2", "session-1"), bucket("v2", "session-1"));
        assert_eq!(bucket("v2", "session-1"), 3605);
    }

    #[test]
    fn the_variant_chain_replaces_the_rule_chain_and_unmatched_turns_take_the_default() {
        let r = routing(100.0);
        let route = r.route(&RouteHints { session_id: "x".into(), ..Default::default() });
        assert_eq!((route.rule, route.chain, route.label()), (Some(0), &["b".to_string()][..], "v2"));
        let mut r = routing(0.0);
        let route = r.route(&RouteHints::default());
        assert_eq!((route.chain, route.label()), (&["a".to_string()][..], CONTROL));
        r.rules[0].tenant = Some("acme".into());
        assert_eq!(r.route(&RouteHints::default()).chain, &["d".to_string()][..]);
    }

    #[test]
    fn bad_names_and_percentages_are_refused_by_name() {
        let mut c = canary(10.0);
        validate(&c).unwrap();
        c.name = "control".into();
        assert!(validate(&c).unwrap_err().to_string().contains("routing.rules.canary.name"));
        c.name = "Big".into();
        assert!(validate(&c).is_err());
        c = canary(100.5);
        assert!(validate(&c).unwrap_err().to_string().contains("percent"));
    }
}

//! Output guardrails: a redaction filter between the model and the turn's writes, and a
//! moderation hook on the user's message and on the answer (docs/guardrails.md).
//!
//! - [`settings`]: `[guard]` and the per-tenant overrides;
//! - [`detect`], [`redact`]: what is redacted, and the streaming filter that never lets a match
//!   out across a delta boundary;
//! - [`moderation`]: the OpenAI-compatible moderation client;
//! - [`turn`]: one turn's guard (its filter and its phrase checks), used by the worker.
//!
//! Everything here sits before the worker's writes, so what a client sees live, what is stored,
//! and what a resume or snapshot replays are the same guarded text.

pub mod detect;
pub mod moderation;
#[cfg(test)]
mod props;
pub mod redact;
pub mod settings;
pub mod turn;

use std::collections::HashMap;
use std::sync::Arc;

pub use settings::{GuardOverride, GuardSettings, RedactPattern};
pub use turn::{Cut, TurnGuard};

use crate::settings::Settings;

/// The turn error code of a message or answer the moderation endpoint flagged.
pub const FLAGGED_CODE: &str = "content_filter";
/// The turn error code when moderation fails and `guard.moderation_fail_open` is false.
pub const UNAVAILABLE_CODE: &str = "moderation_unavailable";
/// Appended to a turn's audited template when `guard.moderation_fail_open` let it go on after a
/// check failed (the message's or an answer phrase's), as retrieval marks a turn it failed.
pub const UNCHECKED_MARK: &str = ";moderation=unavailable";

/// One tenant's guard policy, compiled.
#[derive(Debug)]
struct Policy {
    rules: Option<Arc<redact::Rules>>,
    max_hold: usize,
    moderation: Option<turn::ModerationPolicy>,
}

impl Policy {
    fn new(s: &GuardSettings, moderator: &Option<Arc<moderation::Moderator>>) -> Self {
        // Settings were validated at start-up, so the rules compile.
        let rules = s.redact.then(|| redact::Rules::build(s).ok().map(Arc::new)).flatten();
        let moderation = match (s.moderation, moderator) {
            (true, Some(m)) => Some(turn::ModerationPolicy {
                moderator: m.clone(),
                model: s.moderation_model.clone(),
                fail_open: s.moderation_fail_open,
                phrase_chars: s.moderation_phrase_chars,
                max_in_flight: s.moderation_max_in_flight,
            }),
            _ => None,
        };
        Self { rules, max_hold: s.max_holdback_chars, moderation }
    }
}

/// A worker's guards: the global policy and one per tenant that overrides it.
#[derive(Debug)]
pub struct Guard {
    global: Policy,
    tenants: HashMap<String, Policy>,
}

impl Guard {
    pub fn new(settings: &Settings) -> Self {
        let g = &settings.guard;
        let any_moderation = g.moderation
            || settings.tenants.values().any(|t| t.guard.as_ref().and_then(|o| o.moderation) == Some(true));
        let moderator =
            (any_moderation && !g.moderation_url.is_empty()).then(|| Arc::new(moderation::Moderator::new(g)));
        let tenants = settings
            .tenants
            .iter()
            .filter_map(|(name, t)| t.guard.as_ref().map(|o| (name.clone(), Policy::new(&g.with(o), &moderator))))
            .collect();
        Self { global: Policy::new(g, &moderator), tenants }
    }

    /// The guard of one turn of `tenant`.
    pub fn turn(&self, tenant: &str) -> TurnGuard {
        let p = self.tenants.get(tenant).unwrap_or(&self.global);
        TurnGuard::new(p.rules.clone().map(|r| redact::Redactor::new(r, p.max_hold)), p.moderation.clone())
    }
}

/// Validates `[guard]` and every tenant's override.
pub fn validate(settings: &Settings) -> Result<(), crate::settings_base::SettingsError> {
    settings.guard.validate("guard")?;
    for t in settings.tenants.values() {
        if let Some(o) = &t.guard {
            settings.guard.with(o).validate("tenants.<name>.guard")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TenantSettings;

    fn with_tenant(o: GuardOverride) -> Settings {
        let mut s = Settings::defaults();
        s.tenants.insert("acme".into(), TenantSettings { guard: Some(o), ..Default::default() });
        s
    }

    #[test]
    fn both_guards_are_off_by_default_and_a_tenant_can_turn_redaction_on_for_itself() {
        let g = Guard::new(&Settings::defaults());
        assert!(!g.turn("any").redacts());
        assert!(g.turn("any").screen("hi").is_none());
        let g = Guard::new(&with_tenant(GuardOverride { redact: Some(true), ..Default::default() }));
        assert!(g.turn("acme").redacts());
        assert!(!g.turn("other").redacts());
    }

    #[test]
    fn a_bad_pattern_and_moderation_without_an_endpoint_are_refused_at_start_up() {
        let bad = RedactPattern { name: "x".into(), regex: "(".into() };
        let s = with_tenant(GuardOverride { redact_patterns: Some(vec![bad]), ..Default::default() });
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("tenants.<name>.guard") && err.contains("\"x\""), "{err}");
        let mut s = Settings::defaults();
        s.guard.moderation = true;
        assert!(s.validate().unwrap_err().to_string().contains("moderation_url"));
    }
}

//! The pieces every settings section shares: the error type and the ms-to-[`Duration`] helper.
//!
//! A leaf: it imports nothing from the crate. The section types (`auth`, `gateway` limits and
//! admission, `quota`, `upstream`, `tools`) take these from here rather than from
//! [`crate::settings`], so the settings tree depends on nothing that depends on it.

use std::time::Duration;

/// A setting that cannot be used, named by its dotted path.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The sources could not be read or parsed into the typed tree.
    #[error("cannot load settings: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is out of range.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Milliseconds to a [`Duration`]; settings are kept in ms so they read plainly in TOML.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

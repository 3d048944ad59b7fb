//! Authentication settings (`[auth]`): the mode, the accepted signing keys, and token checks.
//!
//! Secrets are [`SecretString`]s: their `Debug` prints `[REDACTED]`, so a settings dump or an
//! error that formats the tree never shows them.

use std::net::SocketAddr;

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings_base::SettingsError;

/// How the gateway learns who a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: every client is user `dev` of tenant `gateway.tenant`. For local runs
    /// only; refused on a non-loopback `gateway.listen` unless `auth.force_dev_on_non_loopback`.
    Dev,
    /// Every request carries a JWT signed by one of `auth.keys`.
    Jwt,
}

/// A signature algorithm the gateway accepts. Each key accepts exactly one, so a token can never
/// choose how its own signature is checked (no `none`, no RS256 key used as an HMAC secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlg {
    HS256,
    RS256,
    ES256,
}

/// One accepted signing key. Several may be active at once, for rotation.
#[derive(Debug, Clone, Deserialize)]
pub struct KeySettings {
    /// Matched against the token header's `kid`. A token without `kid` is tried against every key
    /// of its algorithm.
    #[serde(default)]
    pub kid: Option<String>,
    pub alg: KeyAlg,
    /// HS256: the shared secret (at least 32 bytes).
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// HS256: a file holding the shared secret (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// RS256 / ES256: the PEM public key.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// RS256 / ES256: a file holding the PEM public key.
    #[serde(default)]
    pub public_key_file: Option<String>,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Allows `mode = "dev"` on a non-loopback `gateway.listen`. Anyone who can reach the port
    /// is then every tenant's user: never set this in production.
    pub force_dev_on_non_loopback: bool,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Longest a token may live: `exp` at most this many seconds after now, and after `iat` when
    /// the token has one. Bounds what a leaked token is worth.
    pub max_token_lifetime_secs: u64,
    /// Longest token accepted, in bytes; longer ones are refused before they are parsed.
    pub max_token_bytes: usize,
    /// Most session ids a token's `sessions` claim may list.
    pub max_token_sessions: usize,
    /// When set, a token's `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    #[serde(default)]
    pub audience: Option<String>,
    /// Accepted signing keys (`[[auth.keys]]`); with `mode = "jwt"`, at least one key or a
    /// `jwks_url`.
    #[serde(default)]
    pub keys: Vec<KeySettings>,
    /// An identity provider's JWKS URL (`https://…/.well-known/jwks.json`). Its RSA, EC and Ed25519
    /// signing keys are accepted next to `keys` (never an HMAC key from a URL). Empty: none.
    #[serde(default)]
    pub jwks_url: String,
    /// Longest one JWKS fetch may take (connect, headers and body).
    pub jwks_timeout_ms: u64,
    /// Least time between two JWKS fetches: a token with an unknown `kid` triggers a fetch at
    /// most this often, so forged `kid`s cannot make the gateway hammer the provider.
    pub jwks_min_refresh_ms: u64,
    /// Key sets older than this are fetched again in the background (a removed key stops
    /// verifying within about this long).
    pub jwks_max_age_ms: u64,
    /// Largest JWKS response body read; a larger one is a failed fetch.
    pub jwks_max_bytes: usize,
}

impl AuthSettings {
    /// Checks the mode against the listen address and that every key is usable. Key material is
    /// parsed here, so a bad PEM stops the process at start-up with the setting named.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), SettingsError> {
        if self.mode == AuthMode::Dev && !listen.ip().is_loopback() && !self.force_dev_on_non_loopback {
            return Err(SettingsError::Invalid {
                key: "auth.mode",
                reason: format!(
                    "`dev` (no authentication) is refused on the non-loopback gateway.listen = {listen}; \
                     use mode = \"jwt\" with [[auth.keys]], or set auth.force_dev_on_non_loopback = true"
                ),
            });
        }
        let invalid = |key: &'static str, reason: String| Err(SettingsError::Invalid { key, reason });
        if self.mode == AuthMode::Jwt && self.keys.is_empty() && self.jwks_url.is_empty() {
            return invalid("auth.keys", "mode = \"jwt\" needs at least one key or auth.jwks_url".into());
        }
        if !self.jwks_url.is_empty() {
            let ok = reqwest::Url::parse(&self.jwks_url).is_ok_and(|u| ["https", "http"].contains(&u.scheme()));
            if !ok {
                return invalid("auth.jwks_url", "must be an https:// (or http://) URL".into());
            }
            if self.jwks_timeout_ms == 0 || self.jwks_max_bytes < 1024 {
                return invalid("auth.jwks_timeout_ms", "needs a timeout > 0 and jwks_max_bytes >= 1024".into());
            }
        }
        if self.max_token_lifetime_secs < 60 {
            return invalid("auth.max_token_lifetime_secs", "must be at least 60".into());
        }
        if self.max_token_bytes < 256 {
            return invalid("auth.max_token_bytes", "must be at least 256".into());
        }
        if let Err(e) = super::jwt::Verifier::new(self) {
            return invalid("auth.keys", e.to_string());
        }
        Ok(())
    }
}

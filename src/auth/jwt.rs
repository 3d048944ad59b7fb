//! JWT verification against the configured key set.
//!
//! The algorithm is fixed per key, never taken from the token: a token names a key (`kid`) or is
//! tried against the keys of its header's algorithm, and each key checks only its own algorithm.
//! That rules out `alg: none` (not an algorithm `jsonwebtoken` knows) and the RS256→HS256
//! confusion (a public key is never used as an HMAC secret). Keys come from the settings and,
//! with `auth.jwks_url`, from an identity provider's key set ([`super::jwks`]).

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::jwks::Jwks;
use super::settings::{AuthSettings, KeyAlg, KeySettings};
use super::{AuthError, Identity};
use crate::keys::is_valid_component;

/// Shortest HS256 secret accepted: a shorter one can be brute-forced offline from any token.
const MIN_HS256_SECRET: usize = 32;
/// Longest `sub` accepted; it is kept per connection and used as a map key.
const MAX_USER_BYTES: usize = 256;
/// The refusal when no key matches a token's `kid` and `alg`.
const NO_KEY: &str = "no key accepts this token's kid and alg";

/// Why the key set could not be built (reported at start-up, naming the key).
#[derive(Debug, thiserror::Error)]
#[error("key #{index} ({kid}): {reason}")]
pub struct KeyError {
    index: usize,
    kid: String,
    reason: String,
}

/// The claims chatfleet reads. Others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    tenant: String,
    /// The user.
    sub: String,
    exp: u64,
    /// Issued at; when present, `exp - iat` is bounded by `auth.max_token_lifetime_secs`.
    #[serde(default)]
    iat: Option<u64>,
    /// When present, the only sessions this token may open.
    #[serde(default)]
    sessions: Option<Vec<String>>,
    /// Space-separated scopes (OAuth 2), e.g. `knowledge:write` for the knowledge API.
    #[serde(default)]
    scope: Option<String>,
}

/// One verifying key: its algorithm is fixed, whatever a token's header says.
pub(super) struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Verifies tokens. Holds decoded key material only; it is never logged (no `Debug`).
pub struct Verifier {
    keys: Vec<Key>,
    /// The identity provider's keys, when `auth.jwks_url` is set.
    jwks: Option<Arc<Jwks>>,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
    max_token_bytes: usize,
    max_sessions: usize,
    max_lifetime: u64,
}

impl Verifier {
    pub fn new(s: &AuthSettings) -> Result<Self, KeyError> {
        let keys = s.keys.iter().enumerate().map(|(i, k)| load(k).map_err(|reason| key_error(i, k, reason)));
        Ok(Self {
            keys: keys.collect::<Result<_, _>>()?,
            jwks: (!s.jwks_url.is_empty()).then(|| Arc::new(Jwks::new(s))),
            leeway: s.leeway_secs,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            max_token_bytes: s.max_token_bytes,
            max_sessions: s.max_token_sessions,
            max_lifetime: s.max_token_lifetime_secs,
        })
    }

    /// Fetches the JWKS once (at start-up), so the first tokens need not wait for it. A failure
    /// is logged, not fatal: tokens with a `kid` of the provider fetch again (rate-limited).
    pub async fn prefetch(&self) {
        if let Some(j) = &self.jwks {
            j.refresh().await;
        }
    }

    /// The identity a token proves, or why it proves none.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::Invalid("token too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed token"))?;
        let provider = self.jwks.as_ref().map(|j| j.keys());
        let mut verdict = self.verify_with(token, &header, provider.as_ref().map(|k| k.as_slice()));
        if let Some(j) = &self.jwks {
            if matches!(verdict, Err(AuthError::Invalid(NO_KEY))) && header.kid.is_some() {
                // A kid nobody knows: perhaps the provider rotated. Fetch (rate-limited) and retry.
                j.refresh().await;
                verdict = self.verify_with(token, &header, Some(&j.keys()));
            }
            j.refresh_if_stale();
        }
        verdict
    }

    fn verify_with(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        provider: Option<&[Key]>,
    ) -> Result<Identity, AuthError> {
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .chain(provider.unwrap_or_default())
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid(NO_KEY));
        }
        let mut last = AuthError::Invalid("bad signature");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => match e.kind() {
                    // Another key of the same algorithm may have signed it (rotation).
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                    ErrorKind::ImmatureSignature => return Err(AuthError::Invalid("token not valid yet (nbf)")),
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                        return Err(AuthError::Invalid("wrong issuer or audience"))
                    }
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                        last = AuthError::Invalid("missing or malformed claims");
                    }
                    _ => last = AuthError::Invalid("invalid token"),
                },
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::from(["exp".to_string()]);
        v.validate_aud = self.audience.is_some();
        // jsonwebtoken checks `iss` and `aud` only when the token has them, unless they are
        // required: a token without them would otherwise pass a configured issuer or audience.
        if let Some(a) = &self.audience {
            v.set_audience(&[a]);
            v.required_spec_claims.insert("aud".into());
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
            v.required_spec_claims.insert("iss".into());
        }
        v
    }

    fn identity(&self, c: Claims) -> Result<Identity, AuthError> {
        if !is_valid_component(&c.tenant) {
            return Err(AuthError::Invalid("tenant claim must be 1-64 characters of [A-Za-z0-9_.-]"));
        }
        if c.sub.is_empty() || c.sub.len() > MAX_USER_BYTES {
            return Err(AuthError::Invalid("sub claim must be 1-256 bytes"));
        }
        let now = super::unix_now();
        let too_long = c.exp > now + self.max_lifetime + self.leeway
            || c.iat.is_some_and(|iat| c.exp.saturating_sub(iat) > self.max_lifetime);
        if too_long {
            return Err(AuthError::Invalid("token lifetime exceeds auth.max_token_lifetime_secs"));
        }
        if let Some(list) = &c.sessions {
            if list.len() > self.max_sessions || !list.iter().all(|s| is_valid_component(s)) {
                return Err(AuthError::Invalid("sessions claim: too many, or an invalid session id"));
            }
        }
        let scope = c.scope.map(String::into_boxed_str);
        Ok(Identity { tenant: c.tenant, user: c.sub, sessions: c.sessions, expires_at: Some(c.exp), scope })
    }
}

fn key_error(index: usize, k: &KeySettings, reason: String) -> KeyError {
    KeyError { index, kid: k.kid.clone().unwrap_or_else(|| "no kid".into()), reason }
}

fn load(k: &KeySettings) -> Result<Key, String> {
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"));
    let (alg, key) = match k.alg {
        KeyAlg::HS256 => {
            let secret = match (&k.secret, &k.secret_file) {
                (Some(s), None) => s.expose_secret().as_bytes().to_vec(),
                (None, Some(path)) => read(path)?.trim_ascii().to_vec(),
                _ => return Err("HS256 needs exactly one of `secret` or `secret_file`".into()),
            };
            if secret.len() < MIN_HS256_SECRET {
                return Err(format!("an HS256 secret must be at least {MIN_HS256_SECRET} bytes"));
            }
            (Algorithm::HS256, DecodingKey::from_secret(&secret))
        }
        KeyAlg::RS256 | KeyAlg::ES256 => {
            let pem = match (&k.public_key_pem, &k.public_key_file) {
                (Some(p), None) => p.as_bytes().to_vec(),
                (None, Some(path)) => read(path)?,
                _ => return Err("RS256/ES256 need exactly one of `public_key_pem` or `public_key_file`".into()),
            };
            if k.alg == KeyAlg::RS256 {
                (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem).map_err(|e| format!("bad RSA PEM: {e}"))?)
            } else {
                (Algorithm::ES256, DecodingKey::from_ec_pem(&pem).map_err(|e| format!("bad EC PEM: {e}"))?)
            }
        }
    };
    Ok(Key { kid: k.kid.clone(), alg, key })
}

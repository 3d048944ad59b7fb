//! JWT verification against the configured key set.
//!
//! The algorithm is fixed per key, never taken from the token: a token names a key (`kid`) or is
//! tried against the keys of its header's algorithm, and each key checks only its own algorithm.
//! That rules out `alg: none` (not an algorithm `jsonwebtoken` knows) and the RS256→HS256
//! confusion (a public key is never used as an HMAC secret).

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::settings::{AuthSettings, KeyAlg, KeySettings};
use super::{AuthError, Identity};
use crate::keys::is_valid_component;

/// Shortest HS256 secret accepted: a shorter one can be brute-forced offline from any token.
const MIN_HS256_SECRET: usize = 32;
/// Longest `sub` accepted; it is kept per connection and used as a map key.
const MAX_USER_BYTES: usize = 256;

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
    /// When present, the only sessions this token may open.
    #[serde(default)]
    sessions: Option<Vec<String>>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens. Holds decoded key material only; it is never logged (no `Debug`).
pub struct Verifier {
    keys: Vec<Key>,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
    max_token_bytes: usize,
    max_sessions: usize,
}

impl Verifier {
    pub fn new(s: &AuthSettings) -> Result<Self, KeyError> {
        let keys = s.keys.iter().enumerate().map(|(i, k)| load(k).map_err(|reason| key_error(i, k, reason)));
        Ok(Self {
            keys: keys.collect::<Result<_, _>>()?,
            leeway: s.leeway_secs,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            max_token_bytes: s.max_token_bytes,
            max_sessions: s.max_token_sessions,
        })
    }

    /// The identity a token proves, or why it proves none.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::Invalid("token too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed token"))?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid("no key accepts this token's kid and alg"));
        }
        let mut last = AuthError::Invalid("bad signature");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => match e.kind() {
                    // Another key of the same algorithm may have signed it (rotation).
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
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
        v.required_spec_claims = HashSet::from(["exp".to_string()]);
        v.validate_aud = self.audience.is_some();
        if let Some(a) = &self.audience {
            v.set_audience(&[a]);
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
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
        if let Some(list) = &c.sessions {
            if list.len() > self.max_sessions || !list.iter().all(|s| is_valid_component(s)) {
                return Err(AuthError::Invalid("sessions claim: too many, or an invalid session id"));
            }
        }
        Ok(Identity { tenant: c.tenant, user: c.sub, sessions: c.sessions, expires_at: Some(c.exp) })
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

//! An identity provider's signing keys, fetched from its JWKS URL (`auth.jwks_url`).
//!
//! The key set is cached. It is fetched again when a token names a `kid` the cache does not hold
//! (the provider rotated), at most once per `auth.jwks_min_refresh_ms` so forged `kid`s cannot
//! turn the gateway into a flood against the provider, and in the background once it is older
//! than `auth.jwks_max_age_ms` (so a key the provider withdrew stops verifying). A failed fetch
//! (timeout, error status, oversized or unusable body) keeps the last good keys.
//!
//! Each key's algorithm comes from the JWK (`alg`, or its key type when absent), never from a
//! token. Symmetric (`oct`) keys and encryption keys are ignored: a secret from a URL is no secret.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;

use super::jwt::Key;
use super::settings::AuthSettings;
use crate::metrics as m;

/// The provider's keys and when they were fetched.
pub(super) struct Jwks {
    url: String,
    http: reqwest::Client,
    max_bytes: usize,
    min_refresh: Duration,
    max_age: Duration,
    keys: RwLock<Arc<Vec<Key>>>,
    times: Mutex<Times>,
    /// Held while a fetch runs, so callers that need fresh keys wait for the one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh is under way.
    background: AtomicBool,
}

#[derive(Default)]
struct Times {
    /// The last fetch that produced keys.
    fetched: Option<Instant>,
    /// The last fetch started, successful or not.
    attempted: Option<Instant>,
}

/// Why a fetch produced no keys (logged; the last good keys stay).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("body larger than auth.jwks_max_bytes")]
    TooLarge,
    #[error("not a JWK set: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("no usable signing key in the set ({0} skipped)")]
    NoKeys(usize),
}

/// A JWK set, read key by key so one key of an unknown type does not spoil the others.
#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    pub fn new(s: &AuthSettings) -> Self {
        let timeout = Duration::from_millis(s.jwks_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            // Only fails when the TLS backend cannot initialise, which no request could survive.
            .expect("an HTTP client for the JWKS");
        Self {
            url: s.jwks_url.clone(),
            http,
            max_bytes: s.jwks_max_bytes,
            min_refresh: Duration::from_millis(s.jwks_min_refresh_ms),
            max_age: Duration::from_millis(s.jwks_max_age_ms),
            keys: RwLock::default(),
            times: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        }
    }

    /// The current keys (the last good set).
    pub fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches the set unless a fetch started less than `jwks_min_refresh_ms` ago; waits for a
    /// fetch already under way instead of starting another.
    pub async fn refresh(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut t = self.times.lock().unwrap_or_else(|p| p.into_inner());
            if t.attempted.is_some_and(|at| at.elapsed() < self.min_refresh) {
                return;
            }
            t.attempted = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS fetched");
                metrics::counter!(m::AUTH_JWKS_FETCHES, "result" => "ok").increment(1);
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                self.times.lock().unwrap_or_else(|p| p.into_inner()).fetched = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %self.url, "JWKS fetch failed; keeping the last good keys");
                metrics::counter!(m::AUTH_JWKS_FETCHES, "result" => "error").increment(1);
            }
        }
    }

    /// Starts a background fetch when the set is older than `jwks_max_age_ms` (or was never
    /// fetched) and none is running; never waits.
    pub fn refresh_if_stale(self: &Arc<Self>) {
        let stale = {
            let t = self.times.lock().unwrap_or_else(|p| p.into_inner());
            let old = t.fetched.map_or(true, |at| at.elapsed() >= self.max_age);
            old && !t.attempted.is_some_and(|at| at.elapsed() < self.min_refresh)
        };
        if stale && !self.background.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                this.refresh().await;
                this.background.store(false, Ordering::Release);
            });
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, FetchError> {
        let resp = self.http.get(&self.url).header("accept", "application/json").send().await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status()));
        }
        if resp.content_length().is_some_and(|n| n as usize > self.max_bytes) {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        let mut chunks = resp.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let raw: RawSet = serde_json::from_slice(&body)?;
        let total = raw.keys.len();
        let keys: Vec<Key> =
            raw.keys.into_iter().filter_map(|v| serde_json::from_value(v).ok()).filter_map(key).collect();
        if keys.is_empty() {
            return Err(FetchError::NoKeys(total));
        }
        Ok(keys)
    }
}

/// The verifying key of one JWK, or `None` for a key chatfleet does not accept.
fn key(jwk: Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS384)) => Algorithm::PS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS512)) => Algorithm::PS512,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256)) if p.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES384)) if p.curve == EllipticCurve::P384 => {
            Algorithm::ES384
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        // `oct` (HMAC) keys, mismatched alg and key type, and curves jsonwebtoken cannot verify.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key { kid: jwk.common.key_id, alg, key })
}

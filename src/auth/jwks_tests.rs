//! JWKS against a real HTTP server (axum on a loopback port): rotation picked up on an unknown
//! `kid`, the refresh rate limit, the last good keys kept through every kind of failed fetch
//! (error status, garbage, only unusable keys, a hang past the timeout, an oversized body), and
//! the background refresh of an old set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

/// What the test server answers next.
#[derive(Clone)]
enum Serve {
    Set(Value),
    Status(u16),
    Body(String),
    Hang,
}

#[derive(Clone)]
struct Provider {
    serve: Arc<Mutex<Serve>>,
    hits: Arc<AtomicUsize>,
}

impl Provider {
    fn set(&self, s: Serve) {
        *self.serve.lock().unwrap() = s;
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn jwks(State(p): State<Provider>) -> Response {
    p.hits.fetch_add(1, Ordering::SeqCst);
    let serve = p.serve.lock().unwrap().clone();
    match serve {
        Serve::Set(v) => axum::Json(v).into_response(),
        Serve::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Serve::Body(b) => b.into_response(),
        Serve::Hang => std::future::pending().await,
    }
}

/// Starts the provider on a free loopback port; returns it and its JWKS URL.
async fn provider(first: Serve) -> (Provider, String) {
    let p = Provider { serve: Arc::new(Mutex::new(first)), hits: Arc::default() };
    let app = axum::Router::new().route("/jwks", axum::routing::get(jwks)).with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (p, url)
}

/// An ES256 key pair: its JWK and a signer.
struct EcKey {
    kid: String,
    jwk: Value,
    signer: EncodingKey,
}

fn ec_key(kid: &str) -> EcKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // Uncompressed point: 0x04 || X || Y.
    let raw = kp.public_key_raw();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    });
    EcKey { kid: kid.into(), jwk, signer: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap() }
}

fn set(keys: &[&EcKey]) -> Serve {
    Serve::Set(json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn signed(k: &EcKey) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    encode(&h, &json!({"tenant": "acme", "sub": "u1", "exp": now() + 60}), &k.signer).unwrap()
}

fn settings(url: &str, min_refresh_ms: u64, max_age_ms: u64) -> AuthSettings {
    AuthSettings {
        mode: AuthMode::Jwt,
        force_dev_on_non_loopback: false,
        leeway_secs: 0,
        max_token_bytes: 8192,
        max_token_sessions: 4,
        issuer: None,
        audience: None,
        keys: vec![],
        max_token_lifetime_secs: 3600,
        jwks_url: url.into(),
        jwks_timeout_ms: 300,
        jwks_min_refresh_ms: min_refresh_ms,
        jwks_max_age_ms: max_age_ms,
        jwks_max_bytes: 4096,
    }
}

const NO_KEY: Result<Identity, AuthError> = Err(AuthError::Invalid("no key accepts this token's kid and alg"));

#[tokio::test]
async fn a_rotation_is_picked_up_on_the_first_token_of_the_new_key() {
    let (old, new) = (ec_key("2025-01"), ec_key("2025-02"));
    let (p, url) = provider(set(&[&old])).await;
    let v = Verifier::new(&settings(&url, 0, 3_600_000)).unwrap();
    v.prefetch().await;
    assert_eq!(p.hits(), 1);
    assert_eq!(v.verify(&signed(&old)).await.unwrap().tenant, "acme");
    assert_eq!(p.hits(), 1, "a known kid needs no fetch");

    p.set(set(&[&new]));
    assert_eq!(v.verify(&signed(&new)).await.unwrap().user, "u1", "the unknown kid fetched the new set");
    assert_eq!(p.hits(), 2);
    assert_eq!(v.verify(&signed(&old)).await, NO_KEY, "the withdrawn key no longer verifies");
}

#[tokio::test]
async fn unknown_kids_fetch_at_most_once_per_refresh_interval() {
    let k = ec_key("a");
    let (p, url) = provider(set(&[&k])).await;
    let v = Verifier::new(&settings(&url, 60_000, 3_600_000)).unwrap();
    v.prefetch().await;
    for i in 0..20 {
        let forged = signed(&EcKey { kid: format!("forged-{i}"), ..ec_key("x") });
        assert_eq!(v.verify(&forged).await, NO_KEY);
    }
    assert_eq!(p.hits(), 1, "forged kids did not reach the provider");
    assert!(v.verify(&signed(&k)).await.is_ok());
}

#[tokio::test]
async fn every_kind_of_failed_fetch_keeps_the_last_good_keys() {
    let k = ec_key("good");
    let (p, url) = provider(set(&[&k])).await;
    let v = Verifier::new(&settings(&url, 0, 3_600_000)).unwrap();
    v.prefetch().await;
    let unknown = signed(&ec_key("new"));
    let secret = "an-hs256-secret-published-in-a-jwks-0123";
    let hmac_only = json!({"keys": [{"kty": "oct", "kid": "hm", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)}]});
    let failures = [
        Serve::Status(500),
        Serve::Body("<html>maintenance</html>".into()),
        Serve::Set(hmac_only),
        Serve::Body(format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(8000))),
        Serve::Hang,
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        p.set(failure);
        let started = tokio::time::Instant::now();
        assert_eq!(v.verify(&unknown).await, NO_KEY, "failure #{i}");
        assert!(started.elapsed() < Duration::from_secs(5), "failure #{i}: the fetch is bounded by its timeout");
        assert_eq!(p.hits(), i + 2, "failure #{i} was fetched");
        assert_eq!(v.verify(&signed(&k)).await.unwrap().tenant, "acme", "failure #{i}: the last good key serves");
    }
    // The HMAC key from the URL was never taken: a token signed with its secret is refused.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hm".into());
    let t = encode(
        &h,
        &json!({"tenant": "acme", "sub": "u", "exp": now() + 60}),
        &EncodingKey::from_secret(secret.as_bytes()),
    );
    assert!(v.verify(&t.unwrap()).await.is_err());
}

#[tokio::test]
async fn an_old_set_is_fetched_again_in_the_background() {
    let (old, new) = (ec_key("old"), ec_key("new"));
    let (p, url) = provider(set(&[&old])).await;
    // Every set is old at once; refreshes are not rate-limited.
    let v = Verifier::new(&settings(&url, 0, 0)).unwrap();
    v.prefetch().await;
    p.set(set(&[&new]));
    // The old key still verifies while the background fetch runs; once it has landed, it no
    // longer does. Polled, with a deadline: the fetch runs on its own task.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match v.verify(&signed(&old)).await {
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the background refresh never landed"),
            Err(e) => {
                assert_eq!(Err::<Identity, _>(e), NO_KEY);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // a poll interval
    }
    assert!(p.hits() >= 2);
    assert!(v.verify(&signed(&new)).await.is_ok());
}

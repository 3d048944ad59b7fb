//! Unit tests of token verification: rotation, algorithms, and every way a token is refused.

use jsonwebtoken::{encode, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;

use super::*;

const SECRET_A: &str = "an-hs256-secret-of-at-least-32-bytes-A";
const SECRET_B: &str = "an-hs256-secret-of-at-least-32-bytes-B";

fn hs(kid: Option<&str>, secret: &str) -> KeySettings {
    KeySettings {
        kid: kid.map(String::from),
        alg: KeyAlg::HS256,
        secret: Some(SecretString::from(secret.to_string())),
        secret_file: None,
        public_key_pem: None,
        public_key_file: None,
    }
}

fn settings(keys: Vec<KeySettings>) -> AuthSettings {
    AuthSettings {
        mode: AuthMode::Jwt,
        force_dev_on_non_loopback: false,
        leeway_secs: 0,
        max_token_bytes: 8192,
        max_token_sessions: 4,
        issuer: None,
        audience: None,
        keys,
        max_token_lifetime_secs: 3600,
        jwks_url: String::new(),
        jwks_timeout_ms: 2000,
        jwks_min_refresh_ms: 30_000,
        jwks_max_age_ms: 3_600_000,
        jwks_max_bytes: 65536,
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(kid: Option<&str>, secret: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = kid.map(String::from);
    encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn good_claims() -> serde_json::Value {
    json!({"tenant": "acme", "sub": "u1", "exp": now() + 60})
}

#[tokio::test]
async fn either_of_two_rotating_keys_is_accepted_by_kid_or_by_trial() {
    let v = Verifier::new(&settings(vec![hs(Some("a"), SECRET_A), hs(Some("b"), SECRET_B)])).unwrap();
    for (kid, secret) in [(Some("a"), SECRET_A), (Some("b"), SECRET_B), (None, SECRET_B)] {
        let id = v.verify(&token(kid, secret, good_claims())).await.unwrap();
        assert_eq!((id.tenant.as_str(), id.user.as_str()), ("acme", "u1"));
    }
    // The right secret under the wrong kid does not verify.
    assert!(v.verify(&token(Some("a"), SECRET_B, good_claims())).await.is_err());
    assert_eq!(
        v.verify(&token(Some("zz"), SECRET_A, good_claims())).await,
        Err(AuthError::Invalid("no key accepts this token's kid and alg"))
    );
}

#[tokio::test]
async fn expired_forged_none_and_claimless_tokens_are_refused() {
    let v = Verifier::new(&settings(vec![hs(None, SECRET_A)])).unwrap();
    let expired = json!({"tenant": "acme", "sub": "u1", "exp": now() - 5});
    assert_eq!(v.verify(&token(None, SECRET_A, expired)).await, Err(AuthError::Expired));
    let forged = token(None, "someone-elses-secret-of-32-bytes-or-more", good_claims());
    assert!(matches!(v.verify(&forged).await, Err(AuthError::Invalid(_))));
    // alg: none, signature stripped.
    let body = forged.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
    assert_eq!(v.verify(&none).await, Err(AuthError::Invalid("malformed token")));
    let no_tenant = token(None, SECRET_A, json!({"sub": "u1", "exp": now() + 60}));
    assert!(matches!(v.verify(&no_tenant).await, Err(AuthError::Invalid(_))));
    let bad_tenant = token(None, SECRET_A, json!({"tenant": "a:b", "sub": "u1", "exp": now() + 60}));
    assert!(matches!(v.verify(&bad_tenant).await, Err(AuthError::Invalid(_))));
    assert!(matches!(v.verify("garbage").await, Err(AuthError::Invalid(_))));
    assert!(matches!(v.verify(&"a".repeat(9000)).await, Err(AuthError::Invalid("token too long"))));
}

#[tokio::test]
async fn a_session_list_restricts_what_the_token_may_open() {
    let v = Verifier::new(&settings(vec![hs(None, SECRET_A)])).unwrap();
    let t = token(None, SECRET_A, json!({"tenant": "acme", "sub": "u", "exp": now() + 60, "sessions": ["s1"]}));
    let id = v.verify(&t).await.unwrap();
    assert!(id.may_open("s1") && !id.may_open("s2"));
    let many = json!({"tenant": "acme", "sub": "u", "exp": now() + 60, "sessions": ["a", "b", "c", "d", "e"]});
    assert!(v.verify(&token(None, SECRET_A, many)).await.is_err());
}

#[test]
fn dev_mode_is_refused_on_a_public_address_unless_forced() {
    let mut s = settings(vec![]);
    s.mode = AuthMode::Dev;
    assert!(s.validate("127.0.0.1:8080".parse().unwrap()).is_ok());
    let err = s.validate("0.0.0.0:8080".parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("auth.force_dev_on_non_loopback"), "{err}");
    s.force_dev_on_non_loopback = true;
    assert!(s.validate("0.0.0.0:8080".parse().unwrap()).is_ok());
}

#[test]
fn short_secrets_and_bad_pems_are_refused_at_start_with_the_key_named() {
    let err = settings(vec![hs(Some("k9"), "short")]).validate("127.0.0.1:1".parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("k9"), "{err}");
    let mut rsa = hs(None, SECRET_A);
    rsa.alg = KeyAlg::RS256;
    rsa.secret = None;
    rsa.public_key_pem = Some("not a pem".into());
    assert!(settings(vec![rsa]).validate("127.0.0.1:1".parse().unwrap()).is_err());
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let s = settings(vec![hs(Some("a"), SECRET_A)]);
    assert!(!format!("{s:?}").contains(SECRET_A));
}

#[test]
fn tokens_are_found_in_headers_and_subprotocols() {
    assert_eq!(bearer("Bearer abc"), Some("abc"));
    assert_eq!(bearer("basic abc"), None);
    assert_eq!(from_subprotocols("chatfleet.v1, bearer.x.y.z"), (Some("x.y.z"), true));
    assert_eq!(from_subprotocols("bearer.t"), (Some("t"), false));
}

/// A throwaway RSA key pair made for these tests only (never used anywhere else).
const RSA_PRIVATE: &str = include_str!("testdata/rs256-test-only.key");
const RSA_PUBLIC: &str = include_str!("testdata/rs256-test-only.pub");

fn public(alg: KeyAlg, kid: &str, pem: &str) -> KeySettings {
    KeySettings {
        kid: Some(kid.into()),
        alg,
        secret: None,
        secret_file: None,
        public_key_pem: Some(pem.into()),
        public_key_file: None,
    }
}

#[tokio::test]
async fn rs256_and_es256_verify_and_an_rs256_public_key_is_never_an_hmac_secret() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let v = Verifier::new(&settings(vec![
        public(KeyAlg::RS256, "rsa", RSA_PUBLIC),
        public(KeyAlg::ES256, "ec", &ec.public_key_pem()),
        hs(Some("hs"), SECRET_A),
    ]))
    .unwrap();
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, &good_claims(), key).unwrap()
    };
    let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    assert_eq!(v.verify(&sign(jsonwebtoken::Algorithm::RS256, "rsa", &rsa_key)).await.unwrap().tenant, "acme");
    assert_eq!(v.verify(&sign(jsonwebtoken::Algorithm::ES256, "ec", &ec_key)).await.unwrap().tenant, "acme");
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret, under the RSA
    // key's kid. The RSA key only checks RS256, so nothing accepts it.
    let confused = sign(jsonwebtoken::Algorithm::HS256, "rsa", &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()));
    assert!(v.verify(&confused).await.is_err());
    // An ES256 token presented under the RSA key's kid.
    assert!(v.verify(&sign(jsonwebtoken::Algorithm::ES256, "rsa", &ec_key)).await.is_err());
}

#[tokio::test]
async fn a_token_before_its_nbf_is_refused_and_accepted_once_it_is_due() {
    let v = Verifier::new(&settings(vec![hs(None, SECRET_A)])).unwrap();
    let early = json!({"tenant": "acme", "sub": "u1", "exp": now() + 600, "nbf": now() + 300});
    assert_eq!(v.verify(&token(None, SECRET_A, early)).await, Err(AuthError::Invalid("token not valid yet (nbf)")));
    let due = json!({"tenant": "acme", "sub": "u1", "exp": now() + 600, "nbf": now() - 1});
    assert_eq!(v.verify(&token(None, SECRET_A, due)).await.unwrap().user, "u1");
}

#[tokio::test]
async fn a_token_that_lives_longer_than_the_maximum_is_refused() {
    // settings() allows 3600 s.
    let v = Verifier::new(&settings(vec![hs(None, SECRET_A)])).unwrap();
    let refused = Err(AuthError::Invalid("token lifetime exceeds auth.max_token_lifetime_secs"));
    let far = json!({"tenant": "acme", "sub": "u1", "exp": now() + 7200});
    assert_eq!(v.verify(&token(None, SECRET_A, far)).await, refused);
    // Issued long ago for a long life, with little of it left: still too long a lifetime.
    let old = json!({"tenant": "acme", "sub": "u1", "iat": now() - 86_400, "exp": now() + 60});
    assert_eq!(v.verify(&token(None, SECRET_A, old)).await, refused);
    let fine = json!({"tenant": "acme", "sub": "u1", "iat": now(), "exp": now() + 3000});
    assert!(v.verify(&token(None, SECRET_A, fine)).await.is_ok());
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_checked_when_set() {
    let mut s = settings(vec![hs(None, SECRET_A)]);
    s.issuer = Some("https://id.example.com/".into());
    s.audience = Some("chatfleet".into());
    let v = Verifier::new(&s).unwrap();
    let claims = |iss: &str, aud: &str| json!({"tenant": "t", "sub": "u", "exp": now() + 60, "iss": iss, "aud": aud});
    assert!(v.verify(&token(None, SECRET_A, claims("https://id.example.com/", "chatfleet"))).await.is_ok());
    let wrong = Err(AuthError::Invalid("wrong issuer or audience"));
    assert_eq!(v.verify(&token(None, SECRET_A, claims("https://evil.example/", "chatfleet"))).await, wrong);
    assert_eq!(v.verify(&token(None, SECRET_A, claims("https://id.example.com/", "other"))).await, wrong);
    assert!(v.verify(&token(None, SECRET_A, good_claims())).await.is_err(), "no iss/aud at all");
}

#[test]
fn production_settings_check_issuer_audience_and_lifetime() {
    let prod: AuthSettings = config::Config::builder()
        .add_source(config::File::from_str(crate::settings::DEFAULT_TOML, config::FileFormat::Toml))
        .add_source(config::File::from_str(include_str!("../../config/production.toml"), config::FileFormat::Toml))
        .build()
        .unwrap()
        .get("auth")
        .unwrap();
    assert!(prod.issuer.as_deref().is_some_and(|i| !i.is_empty()), "production sets auth.issuer");
    assert!(prod.audience.as_deref().is_some_and(|a| !a.is_empty()), "production sets auth.audience");
    assert!(prod.max_token_lifetime_secs <= 86_400);
}

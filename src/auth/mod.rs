//! Who a client is: JWT verification (or the local `dev` mode) into an [`Identity`].
//!
//! The tenant comes from the token only, never from a client's frames, and every session key is
//! built from it (`keys::Keyspace::session`), so one tenant cannot name another's data. Tokens
//! arrive as `Authorization: Bearer` (HTTP) or, on WebSocket, as `?token=` or the subprotocol
//! `bearer.<token>` (browsers cannot set headers on a WebSocket); see docs/security.md.

mod jwks;
mod jwt;
pub mod settings;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use jwt::{KeyError, Verifier};
pub use settings::{AuthMode, AuthSettings, KeyAlg, KeySettings};

/// The WebSocket subprotocol of protocol v1, echoed when a client offers it.
pub const SUBPROTOCOL: &str = "chatfleet.v1";
/// Prefix of the subprotocol that carries a token: `bearer.<jwt>`.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: String,
    pub user: String,
    /// When present, the only sessions this client may open.
    pub sessions: Option<Vec<String>>,
    /// Token expiry (Unix seconds); `None` in dev mode.
    pub expires_at: Option<u64>,
    /// The token's `scope` claim (space-separated scopes), kept as sent: every open socket
    /// holds an identity, so it stays one pointer. None in dev mode.
    pub scope: Option<Box<str>>,
}

impl Identity {
    /// True when the token's `scope` claim holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.as_deref().is_some_and(|all| all.split_whitespace().any(|s| s == scope))
    }

    /// True when the token allows opening `session`.
    pub fn may_open(&self, session: &str) -> bool {
        self.sessions.as_ref().map_or(true, |list| list.iter().any(|s| s == session))
    }

    /// Who this client acts as on `session`, for the session's owner check in Redis
    /// (`lua/chatfleet.lua`, `refused`): `"*"` when its token names the session explicitly (a
    /// `sessions` claim shares sessions on purpose), else its user when sessions are bound to
    /// their creator (`session.bind_to_user`), else `""` (shared across the tenant).
    pub fn actor(&self, session: &str, bind_to_user: bool) -> &str {
        if self.sessions.as_ref().is_some_and(|list| list.iter().any(|s| s == session)) {
            "*"
        } else if bind_to_user {
            &self.user
        } else {
            ""
        }
    }

    /// Time left until the token expires (zero when it has); `None` when it never does.
    pub fn time_left(&self) -> Option<Duration> {
        let exp = self.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Some(Duration::from_secs(exp).saturating_sub(now))
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Why a client is not authenticated. The messages are safe to send: they never include the
/// token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// Turns the credentials of a request into an [`Identity`].
pub struct Authenticator {
    mode: AuthMode,
    dev_tenant: String,
    verifier: Verifier,
}

impl Authenticator {
    /// Builds from validated settings (`Settings::validate` has already parsed the keys).
    pub fn new(s: &AuthSettings, dev_tenant: &str) -> Result<Self, KeyError> {
        Ok(Self { mode: s.mode, dev_tenant: dev_tenant.to_string(), verifier: Verifier::new(s)? })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Fetches the identity provider's keys, if any (see [`Verifier::prefetch`]).
    pub async fn prefetch(&self) {
        if self.mode == AuthMode::Jwt {
            self.verifier.prefetch().await;
        }
    }

    /// The identity of a request carrying `token` (if any). Waits only when the token names a
    /// key the gateway does not know yet and the JWKS is fetched again.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match self.mode {
            AuthMode::Dev => Ok(Identity {
                tenant: self.dev_tenant.clone(),
                user: "dev".into(),
                sessions: None,
                expires_at: None,
                scope: None,
            }),
            AuthMode::Jwt => self.verifier.verify(token.ok_or(AuthError::Missing)?).await,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

/// From a `Sec-WebSocket-Protocol` header value: the token of a `bearer.<token>` entry, and
/// whether the client also offered [`SUBPROTOCOL`].
pub fn from_subprotocols(header: &str) -> (Option<&str>, bool) {
    let mut token = None;
    let mut v1 = false;
    for p in header.split(',').map(str::trim) {
        if p == SUBPROTOCOL {
            v1 = true;
        } else if let Some(t) = p.strip_prefix(BEARER_SUBPROTOCOL_PREFIX) {
            token = Some(t);
        }
    }
    (token, v1)
}

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod tests;

//! Which web pages may use this gateway: the `Origin` check and CORS, both from
//! `gateway.allowed_origins`.
//!
//! A browser attaches `Origin` to every WebSocket handshake and cross-origin request, so a page of
//! another site could otherwise open sockets to, and POST `text/plain` bodies at, a developer's
//! `chatfleet dev` (which has no authentication) and spend their upstream keys. The rule:
//! a request without `Origin` (curl, SDKs, a same-origin GET) passes; with one, it passes when
//! it is the gateway's own origin (the `Host` it was sent to) or listed in
//! `gateway.allowed_origins` (`"*"`: any, for a token-only public API). Listed origins also get
//! CORS headers, so a page there can import `chatfleet.js` and use SSE, long-poll and POST.
//!
//! In dev mode (on loopback) the `Host` must also be a loopback name: a page whose own DNS name is
//! made to point at 127.0.0.1 (DNS rebinding) is then still a stranger. Pages of loopback origins
//! pass there, whatever their port: the chat page of one local gateway fails over to another.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::uri::{Authority, Uri};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;
use super::App;
use crate::settings::SettingsError;

/// How long a browser may cache a CORS preflight answer: the policy changes only with a deploy.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The origin policy of one gateway.
pub(crate) struct Origins {
    any: bool,
    /// Listed origins, normalised to `scheme://host[:port]` in lower case.
    listed: Vec<HeaderValue>,
    /// Dev mode on a loopback listener: only loopback `Host`s are served.
    loopback_hosts_only: bool,
}

impl Origins {
    /// Parses `gateway.allowed_origins`. `dev_local`: the gateway runs without authentication
    /// on loopback, where `"*"` would hand it to every web page.
    pub fn new(allowed: &[String], dev_local: bool) -> Result<Self, SettingsError> {
        let invalid = |reason: String| SettingsError::Invalid { key: "gateway.allowed_origins", reason };
        let mut o = Self { any: false, listed: Vec::new(), loopback_hosts_only: dev_local };
        for entry in allowed {
            if entry == "*" {
                if dev_local {
                    return Err(invalid("\"*\" would let any web page drive a gateway in dev mode".into()));
                }
                o.any = true;
                continue;
            }
            let norm = normalise(entry).ok_or_else(|| {
                invalid(format!(
                    "{entry:?} is not an origin like \"https://app.example.com\" (scheme, host, optional port)"
                ))
            })?;
            o.listed
                .push(HeaderValue::from_str(&norm).map_err(|_| invalid(format!("{entry:?} is not a header value")))?);
        }
        Ok(o)
    }

    /// Why a request with these headers may not be served, if it may not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| Authority::from_str(h).ok());
        if self.loopback_hosts_only && host.as_ref().is_some_and(|h| !is_loopback_name(h.host())) {
            return Err("a dev gateway only answers requests sent to localhost or a loopback address");
        }
        let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
        if self.any {
            return Ok(());
        }
        let Some(origin) = origin.to_str().ok().and_then(normalise) else {
            return Err("this page's origin may not use this gateway; see gateway.allowed_origins");
        };
        let listed = self.listed.iter().any(|o| o.as_bytes() == origin.as_bytes());
        let local = self.loopback_hosts_only && loopback_origin(&origin);
        if listed || local || host.is_some_and(|h| same_origin(&origin, &h)) {
            return Ok(());
        }
        Err("this page's origin may not use this gateway; see gateway.allowed_origins")
    }

    /// The CORS layer: headers for listed origins only (none when the list is empty).
    pub fn cors(&self) -> CorsLayer {
        let origins = if self.any { AllowOrigin::any() } else { AllowOrigin::list(self.listed.clone()) };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(CORS_MAX_AGE)
    }
}

/// Middleware: refuses (403 `forbidden`) a request from a page that may not use the gateway.
pub(crate) async fn check(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Err(why) = app.origins.check(req.headers()) {
        metrics::counter!(crate::metrics::GATEWAY_ORIGIN_REFUSED).increment(1);
        return ApiError::OriginRefused(why).into_response();
    }
    next.run(req).await
}

/// `scheme://host[:port]` in lower case, for an http(s) origin with nothing after the authority.
fn normalise(origin: &str) -> Option<String> {
    let uri = Uri::from_str(origin).ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let bare = !authority.as_str().contains('@') && uri.query().is_none() && matches!(uri.path(), "" | "/");
    (bare && (scheme == "http" || scheme == "https") && !origin.ends_with('/'))
        .then(|| format!("{scheme}://{}", authority.as_str().to_ascii_lowercase()))
}

/// True when `origin` (normalised) names the host and port the request was sent to (`Host`); a
/// `Host` without a port has the default port of the origin's scheme.
fn same_origin(origin: &str, host: &Authority) -> bool {
    let Some(o) = Uri::from_str(origin).ok() else { return false };
    let Some(oa) = o.authority() else { return false };
    let default = if o.scheme_str() == Some("https") { 443 } else { 80 };
    oa.host().eq_ignore_ascii_case(host.host())
        && oa.port_u16().unwrap_or(default) == host.port_u16().unwrap_or(default)
}

/// True for an origin on a loopback name (a page served from this machine).
fn loopback_origin(origin: &str) -> bool {
    Uri::from_str(origin).ok().and_then(|u| u.authority().map(|a| is_loopback_name(a.host()))).unwrap_or(false)
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_pages_own_origin_and_listed_ones_pass_and_strangers_do_not() {
        let o = Origins::new(&["https://App.example.com".into()], false).unwrap();
        assert!(o.check(&req("chat.example.com", None)).is_ok(), "no Origin: not a browser page");
        assert!(o.check(&req("chat.example.com", Some("https://chat.example.com"))).is_ok());
        assert!(o.check(&req("127.0.0.1:8080", Some("http://127.0.0.1:8080"))).is_ok());
        assert!(o.check(&req("chat.example.com", Some("https://app.example.com"))).is_ok());
        assert!(o.check(&req("chat.example.com", Some("https://evil.example"))).is_err());
        assert!(o.check(&req("127.0.0.1:8080", Some("http://127.0.0.1:9999"))).is_err(), "another port");
        assert!(o.check(&req("chat.example.com", Some("null"))).is_err());
    }

    #[test]
    fn a_dev_gateway_answers_loopback_hosts_only_and_refuses_a_wildcard() {
        let o = Origins::new(&[], true).unwrap();
        assert!(o.check(&req("localhost:8080", Some("http://localhost:8080"))).is_ok());
        // Another local gateway's page (failover between local gateways).
        assert!(o.check(&req("127.0.0.1:8080", Some("http://127.0.0.1:8081"))).is_ok());
        assert!(o.check(&req("127.0.0.1:8080", Some("https://evil.example"))).is_err());
        assert!(o.check(&req("[::1]:8080", None)).is_ok());
        // DNS rebinding: same origin as far as the browser knows, but not a loopback name.
        assert!(o.check(&req("evil.example:8080", Some("http://evil.example:8080"))).is_err());
        assert!(o.check(&req("evil.example:8080", None)).is_err());
        assert!(Origins::new(&["*".into()], true).is_err());
        assert!(Origins::new(&["*".into()], false).unwrap().check(&req("a", Some("https://b.example"))).is_ok());
    }

    #[test]
    fn allowed_origins_must_be_bare_origins() {
        for bad in [
            "example.com",
            "https://example.com/app",
            "ftp://example.com",
            "https://u@example.com",
            "https://example.com/",
        ] {
            assert!(Origins::new(&[bad.into()], false).is_err(), "{bad}");
        }
        assert!(Origins::new(&["http://localhost:5173".into()], true).is_ok());
    }
}

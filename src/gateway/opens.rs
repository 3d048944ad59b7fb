//! Who opens sessions, and how often: the client's address (the TCP peer, or `X-Forwarded-For`
//! behind `gateway.limits.trusted_proxy_hops` proxies), the per-IP and per-user open rate, and
//! the WebSocket form of its refusal.
//!
//! Every open writes session keys that live `session.ttl_secs` in a Redis that runs with
//! `noeviction`, so a loop of new session ids would otherwise fill it and stop every tenant's
//! writes. A refused HTTP open is a 429 with `Retry-After`; a refused WebSocket is accepted,
//! told `error {rate_limited, retry_after_ms}` and closed with 1013 (Try Again Later), because a
//! browser sees nothing of a refused handshake but "1006".

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::Response;

use super::error::close;
use super::error::ApiError;
use super::App;
use crate::protocol;
use crate::settings::ms;

/// The client's address as far as this gateway can tell (`None` when served without one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<App> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(Self(client_ip(&parts.headers, peer, app.settings.gateway.limits.trusted_proxy_hops)))
    }
}

/// The client behind `hops` trusted proxies: the `hops`th `X-Forwarded-For` entry from the right
/// (each proxy appends the address it saw, so entries to the left of it are the client's own
/// claims). Without such an entry the request did not come through the proxies: the peer.
pub(crate) fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let entry = entries.len().checked_sub(hops).map(|i| entries[i]);
    let parsed = entry.and_then(|e| e.parse::<IpAddr>().ok().or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip())));
    parsed.or(peer)
}

/// Completes the handshake only to say why the socket cannot stay: `error {rate_limited,
/// retry_after_ms}`, then close 1013.
pub(crate) fn refuse_socket(app: &App, ws: WebSocketUpgrade, refusal: ApiError) -> Response {
    let write_timeout = ms(app.settings.gateway.write_timeout_ms);
    let frame = protocol::encode(&refusal.to_control());
    ws.on_upgrade(move |mut socket| async move {
        let _ = tokio::time::timeout(write_timeout, async {
            socket.send(Message::Text(frame.into())).await?;
            let close = CloseFrame {
                code: close::TRY_AGAIN_LATER,
                reason: Utf8Bytes::from_static("too many opens; retry later"),
            };
            socket.send(Message::Close(Some(close))).await
        })
        .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_read_only_behind_the_configured_proxies() {
        let peer: Option<IpAddr> = Some("10.0.0.5".parse().unwrap());
        let h = xff("6.6.6.6, 198.51.100.7");
        assert_eq!(client_ip(&h, peer, 0), peer, "no trusted proxy: the header is the client's claim");
        assert_eq!(client_ip(&h, peer, 1), Some("198.51.100.7".parse().unwrap()), "the address our proxy saw");
        assert_eq!(client_ip(&h, peer, 2), Some("6.6.6.6".parse().unwrap()));
        assert_eq!(client_ip(&h, peer, 3), peer, "fewer entries than proxies: not through them");
        assert_eq!(client_ip(&xff("garbage"), peer, 1), peer);
        assert_eq!(client_ip(&xff("[2001:db8::1]:443"), peer, 1), Some("2001:db8::1".parse().unwrap()));
    }
}

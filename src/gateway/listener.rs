//! The HTTP/1 accept loop: each TCP connection is served by hyper with upgrades (WebSocket) and
//! a header-read timeout, and its peer address is handed to the handlers (`ConnectInfo`).
//!
//! `axum::serve` gives hyper no timer, so it has no header-read timeout: a client that sends half
//! a request line and then a byte a minute (slowloris) holds its connection, uncounted, for ever.
//! Here `gateway.header_read_timeout_ms` bounds the time from a connection's start (or the end
//! of its previous response) to the end of a request's headers. Requests then count against the
//! usual limits; upgraded sockets leave this loop and are drained by the gateway's own tracker.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` fires, then lets requests in flight finish
/// (SSE streams and long-polls end themselves on shutdown) for at most `drain`.
pub(super) async fn serve<L>(
    mut listener: L,
    router: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    drain: Duration,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Retries accept errors (e.g. out of file descriptors) itself, with a pause.
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let service = router.clone().map_request(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)).with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests: the client's problem, not ours.
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        tracing::warn!("drain deadline passed with HTTP requests still in flight");
    }
}

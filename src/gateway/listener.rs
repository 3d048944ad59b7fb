//! The HTTP/1 accept loop: each TCP connection is served by hyper with upgrades (WebSocket) and
//! a header-read timeout, and its peer address is handed to the handlers (`ConnectInfo`).
//!
//! `axum::serve` gives hyper no timer, so it has no header-read timeout: a client that sends half
//! a request line and then a byte a minute (slowloris) holds its connection, uncounted, for ever.
//! Here `gateway.header_read_timeout_ms` bounds the time from a connection's start (or the end
//! of its previous response) to the end of a request's headers. Requests then count against the
//! usual limits; upgraded sockets leave this loop and are drained by the gateway's own tracker.
//!
//! A connection is served once it has an opening slot (`opening.rs`); until then it waits as an
//! accepted socket, for at most the header-read timeout.

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

use super::opening::{OpeningSlot, Openings};

/// Serves `router` on `listener` until `shutdown` fires, then lets requests in flight finish
/// (SSE streams and long-polls end themselves on shutdown) for at most `drain`.
pub(super) async fn serve<L>(
    mut listener: L,
    router: Router,
    header_read_timeout: Duration,
    openings: Openings,
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
        let (router, shutdown, openings) = (router.clone(), shutdown.clone(), openings.clone());
        connections.spawn(async move {
            // Waiting holds only the socket: the connection's state is boxed once it has a slot.
            let slot = tokio::select! {
                slot = openings.enter(header_read_timeout) => slot,
                _ = shutdown.cancelled() => return,
            };
            let Some(slot) = slot else {
                metrics::counter!(crate::metrics::GATEWAY_OPENINGS_TIMED_OUT).increment(1);
                return;
            };
            Box::pin(serve_connection(io, peer, router, slot, header_read_timeout, shutdown)).await;
        });
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        tracing::warn!("drain deadline passed with HTTP requests still in flight");
    }
}

/// Serves one accepted connection with hyper. Its opening slot goes into each request (a
/// WebSocket handler takes it) and is released by the first response.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    slot: OpeningSlot,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let released = slot.clone();
    let service = router
        .map_request(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req.extensions_mut().insert(slot.clone());
            req
        })
        .map_response(move |res| {
            released.release();
            res
        });
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
}

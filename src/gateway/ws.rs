//! The WebSocket transport: `GET /v1/ws?session_id=…`.
//!
//! One task per socket. It waits for `hello`, opens the session [`Feed`], then multiplexes:
//! client frames (send, cancel, ping), feed events (written in order, runs of deltas merged when
//! the client is slow or asked for a coalescing window), WebSocket pings with a pong deadline,
//! and shutdown (which sends `reconnect` and closes 1012). axum's graceful shutdown does not wait
//! for upgraded sockets, so the task watches the shutdown token itself.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{timeout, Instant};

use super::commands;
use super::error::ApiError;
use super::feed::{merge_deltas, Feed, FeedError, Item};
use super::{App, ConnGuard};
use crate::metrics as m;
use crate::protocol::{self, ClientMsg, ControlMsg, ErrorCode};
use crate::settings::ms;

/// Close codes (docs/protocol.md).
pub mod close {
    /// The server is restarting or draining: reconnect (resume) at once.
    pub const GOING_AWAY: u16 = 1012;
    /// A frame broke the protocol (e.g. no `hello` first, binary data).
    pub const PROTOCOL: u16 = 1002;
    /// A frame or message exceeded its size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// No hello, or no traffic and no pong, in time.
    pub const TIMEOUT: u16 = 4000;
    /// The session could not be opened (storage unavailable); reconnect with backoff.
    pub const UNAVAILABLE: u16 = 4003;
    /// The client read too slowly and its send queue overflowed: reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// How long a closing socket waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Largest single frame the gateway writes (a snapshot of a long conversation is the largest).
const MAX_FRAME_OUT: usize = 16 * 1024 * 1024;

/// Bytes tungstenite gathers before it writes to the socket (below the configured maximum).
const WRITE_BUFFER: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub(super) struct WsQuery {
    session_id: Option<String>,
}

/// Upgrades to a WebSocket, if a connection slot is free.
pub(super) async fn upgrade(State(app): State<App>, Query(q): Query<WsQuery>, ws: WebSocketUpgrade) -> Response {
    let guard = match app.admit("ws") {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    if let Some(sid) = &q.session_id {
        if !crate::keys::is_valid_component(sid) {
            return ApiError::BadRequest("session_id must be 1-64 characters of [A-Za-z0-9_.-]".into()).into_response();
        }
    }
    let limit = app.settings.gateway.max_frame_bytes;
    // tungstenite flushes at `write_buffer_size` and refuses to grow past the max; the max must
    // exceed the flush threshold, so the threshold is derived from the configured bound.
    let queue = app.settings.gateway.send_queue_bytes;
    ws.max_frame_size(limit)
        .max_message_size(limit)
        .write_buffer_size((queue / 4).min(WRITE_BUFFER))
        // Every send is flushed before the next, so this buffer holds one frame at a time; its
        // maximum only has to admit the largest frame (a snapshot). The per-connection bound on
        // queued data is the hub queue (`gateway.send_queue_bytes`).
        .max_write_buffer_size(queue.max(MAX_FRAME_OUT))
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("conn", transport = "ws");
            tracing::Instrument::instrument(serve(app, socket, q.session_id, guard), span)
        })
}

/// Why a socket loop ended, and the close frame to send (if any).
struct Ending(Option<(u16, &'static str)>);

async fn serve(app: App, socket: WebSocket, query_sid: Option<String>, guard: ConnGuard) {
    let (mut tx, mut rx) = socket.split();
    let write_timeout = ms(app.settings.gateway.write_timeout_ms);
    let ending = match session(&app, &mut tx, &mut rx, query_sid).await {
        Ok(e) | Err(e) => e,
    };
    if let Some((code, reason)) = ending.0 {
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        if timeout(write_timeout, tx.send(Message::Close(Some(frame)))).await.is_ok() {
            // Close handshake: read (and drop) until the peer's close, briefly. Dropping a socket
            // with unread input makes the kernel send RST, and a peer that gets RST may lose the
            // close frame (and its code) that is still in its receive buffer.
            let _ = timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = rx.next().await {} }).await;
        }
    }
    let _ = timeout(CLOSE_LINGER, tx.close()).await;
    drop(guard);
}

type Tx = futures::stream::SplitSink<WebSocket, Message>;
type Rx = futures::stream::SplitStream<WebSocket>;

async fn session(app: &App, tx: &mut Tx, rx: &mut Rx, query_sid: Option<String>) -> Result<Ending, Ending> {
    let g = &app.settings.gateway;
    let write_timeout = ms(g.write_timeout_ms);
    // 1. hello
    let hello = tokio::select! {
        r = timeout(ms(g.hello_timeout_ms), rx.next()) => r.map_err(|_| Ending(Some((close::TIMEOUT, "no hello in time"))))?,
        _ = app.shutdown.cancelled() => return Err(Ending(Some((close::GOING_AWAY, "draining")))),
    };
    let (session_id, epoch, last_seq, coalesce) = match read_frame(hello) {
        Ok(ClientMsg::Hello { session_id, epoch, last_seq, coalesce_ms }) => (session_id, epoch, last_seq, coalesce_ms),
        Ok(_) => {
            return Err(reject(tx, app, ErrorCode::BadRequest, "the first frame must be hello", write_timeout).await)
        }
        Err(FrameError::Closed) => return Err(Ending(None)),
        Err(FrameError::Ignore) => {
            return Err(reject(tx, app, ErrorCode::BadRequest, "the first frame must be hello", write_timeout).await)
        }
        Err(FrameError::Bad(code, msg)) => return Err(reject(tx, app, code, &msg, write_timeout).await),
    };
    if query_sid.as_deref().is_some_and(|q| q != session_id) {
        return Err(
            reject(tx, app, ErrorCode::BadRequest, "hello.session_id differs from the URL", write_timeout).await
        );
    }
    if !crate::keys::is_valid_component(&session_id) {
        return Err(reject(
            tx,
            app,
            ErrorCode::BadRequest,
            "session_id must be 1-64 characters of [A-Za-z0-9_.-]",
            write_timeout,
        )
        .await);
    }
    let coalesce = ms(coalesce.unwrap_or(0).min(g.max_client_coalesce_ms));
    let keys = app.store.keys().session(&app.tenant, &session_id);
    let (mut feed, opening) =
        match Feed::open(&app.hub, &app.store, keys, &session_id, epoch.as_deref(), last_seq, true).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot open session");
                return Err(
                    reject(tx, app, ErrorCode::Unavailable, "the session cannot be opened now", write_timeout).await
                );
            }
        };
    send_control(tx, &opening.welcome, write_timeout).await?;
    send_item(tx, &feed, opening.first, write_timeout).await?;

    // 2. the session loop
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(ms(g.ping_interval_ms));
    ping.reset();
    loop {
        tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                let msg = ControlMsg::Reconnect { reason: "draining".into() };
                let _ = send_control(tx, &msg, write_timeout).await;
                return Ok(Ending(Some((close::GOING_AWAY, "draining"))));
            }
            incoming = rx.next() => {
                last_heard = Instant::now();
                match read_frame(incoming) {
                    Ok(ClientMsg::Hello { .. }) => {
                        let e = ApiError::BadRequest("hello was already received".into());
                        send_control(tx, &e.to_control(), write_timeout).await?;
                    }
                    Ok(msg) => {
                        if let Some(reply) = commands::handle(app, feed.keys(), msg).await {
                            send_control(tx, &reply, write_timeout).await?;
                        }
                    }
                    Err(FrameError::Closed) => return Ok(Ending(None)),
                    Err(FrameError::Ignore) => {}
                    Err(FrameError::Bad(code, msg)) => {
                        if code == ErrorCode::TooLarge {
                            return Err(reject(tx, app, code, &msg, write_timeout).await);
                        }
                        metrics::counter!(m::GATEWAY_REJECTED, "code" => code_label(code)).increment(1);
                        let e = ControlMsg::Error { code, message: msg, retry_after_ms: None };
                        send_control(tx, &e, write_timeout).await?;
                    }
                }
            }
            item = feed.next() => {
                let item = match item {
                    Ok(i) => i,
                    Err(FeedError::Overflow) => {
                        metrics::counter!(m::GATEWAY_SLOW_CLOSES).increment(1);
                        return Err(Ending(Some((close::SLOW_CONSUMER, "too slow; resume from your last seq"))));
                    }
                    Err(FeedError::Store(e)) => {
                        tracing::error!(error = %e, "session feed failed");
                        return Err(Ending(Some((close::UNAVAILABLE, "session feed failed; reconnect"))));
                    }
                };
                let item = if coalesce.is_zero() { item } else { gather(&mut feed, item, coalesce).await? };
                send_item(tx, &feed, item, write_timeout).await?;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ms(g.pong_timeout_ms) {
                    return Ok(Ending(Some((close::TIMEOUT, "no pong in time"))));
                }
                timeout(write_timeout, tx.send(Message::Ping(Default::default()))).await
                    .map_err(|_| Ending(None))?.map_err(|_| Ending(None))?;
            }
        }
    }
}

/// For a client that asked for `coalesce_ms`: waits out the window, collecting what arrives.
async fn gather(feed: &mut Feed, first: Item, window: Duration) -> Result<Item, Ending> {
    let Item::Frames(mut frames) = first else { return Ok(first) };
    let until = Instant::now() + window;
    loop {
        match timeout(until.saturating_duration_since(Instant::now()), feed.next()).await {
            Err(_) => return Ok(Item::Frames(frames)),
            Ok(Ok(Item::Frames(mut more))) => frames.append(&mut more),
            Ok(Ok(snap @ Item::Snapshot(_))) => return Ok(snap),
            Ok(Err(FeedError::Overflow)) => {
                return Err(Ending(Some((close::SLOW_CONSUMER, "too slow; resume from your last seq"))))
            }
            Ok(Err(FeedError::Store(_))) => {
                return Err(Ending(Some((close::UNAVAILABLE, "session feed failed; reconnect"))))
            }
        }
    }
}

async fn send_item(tx: &mut Tx, feed: &Feed, item: Item, write_timeout: Duration) -> Result<(), Ending> {
    match item {
        Item::Snapshot(s) => send_control(tx, &s, write_timeout).await,
        Item::Frames(frames) => {
            let queued: usize = frames.iter().map(|f| f.json.len()).sum();
            let frames = if frames.len() > 1 { merge_deltas(frames) } else { frames };
            for f in &frames {
                // A write stuck on a client that stopped reading gives way to the overflow
                // signal, so the 4008 close is queued behind what the client has not read yet.
                tokio::select! {
                    biased;
                    r = write(tx, Message::Text(f.json.clone()), write_timeout) => r?,
                    _ = feed.overflow().cancelled() => {
                        metrics::counter!(m::GATEWAY_SLOW_CLOSES).increment(1);
                        return Err(Ending(Some((close::SLOW_CONSUMER, "too slow; resume from your last seq"))));
                    }
                }
            }
            feed.written(queued);
            Ok(())
        }
    }
}

async fn send_control(tx: &mut Tx, msg: &ControlMsg, write_timeout: Duration) -> Result<(), Ending> {
    write(tx, Message::Text(protocol::encode(msg).into()), write_timeout).await
}

async fn write(tx: &mut Tx, msg: Message, write_timeout: Duration) -> Result<(), Ending> {
    let len = match &msg {
        Message::Text(t) => t.len(),
        _ => 0,
    };
    match timeout(write_timeout, tx.send(msg)).await {
        Ok(Ok(())) => {
            metrics::counter!(m::GATEWAY_FRAMES_OUT).increment(1);
            metrics::counter!(m::GATEWAY_BYTES_OUT).increment(len as u64);
            Ok(())
        }
        // The peer is gone or stuck: drop the connection without a close handshake.
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket write failed");
            Err(Ending(None))
        }
        Err(_) => {
            tracing::debug!("websocket write timed out");
            Err(Ending(None))
        }
    }
}

/// Sends an error and ends the connection with the close code matching it.
async fn reject(tx: &mut Tx, _app: &App, code: ErrorCode, message: &str, write_timeout: Duration) -> Ending {
    metrics::counter!(m::GATEWAY_REJECTED, "code" => code_label(code)).increment(1);
    let msg = ControlMsg::Error { code, message: message.to_string(), retry_after_ms: None };
    let _ = send_control(tx, &msg, write_timeout).await;
    let close = match code {
        ErrorCode::TooLarge => close::TOO_LARGE,
        ErrorCode::Unavailable => close::UNAVAILABLE,
        _ => close::PROTOCOL,
    };
    Ending(Some((close, "refused")))
}

enum FrameError {
    Closed,
    Ignore,
    Bad(ErrorCode, String),
}

fn read_frame(msg: Option<Result<Message, axum::Error>>) -> Result<ClientMsg, FrameError> {
    match msg {
        None => Err(FrameError::Closed),
        Some(Err(e)) => {
            let text = e.to_string();
            tracing::debug!(error = %text, "websocket read error");
            if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                Err(FrameError::Bad(ErrorCode::TooLarge, "frame exceeds the size limit".into()))
            } else {
                Err(FrameError::Closed)
            }
        }
        Some(Ok(Message::Text(t))) => {
            protocol::decode_client(&t).map_err(|e| FrameError::Bad(ErrorCode::BadRequest, e.to_string()))
        }
        Some(Ok(Message::Binary(_))) => {
            Err(FrameError::Bad(ErrorCode::BadRequest, "binary frames are not accepted; send JSON text".into()))
        }
        Some(Ok(Message::Close(_))) => Err(FrameError::Closed),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Err(FrameError::Ignore),
    }
}

pub(super) fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::Busy => "busy",
        ErrorCode::Degraded => "degraded",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Unavailable => "unavailable",
    }
}

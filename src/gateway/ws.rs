//! The WebSocket transport: `GET /v1/ws?session_id=…`.
//!
//! One task per socket. It waits for `hello`, opens the session [`Feed`], then multiplexes:
//! client frames (send, cancel, ping), feed events (written in order, runs of deltas merged when
//! the client is slow or asked for a coalescing window), WebSocket pings with a pong deadline,
//! and shutdown (which sends `reconnect` and closes 1012). axum's graceful shutdown does not wait
//! for upgraded sockets, so the task watches the shutdown token itself.
//!
//! The client is authenticated before the upgrade (`?token=` or the `bearer.<token>` subprotocol);
//! the socket closes with 4001 when its token expires. Every incoming frame counts against the
//! connection's rate (`gateway.limits`); a connection refused too often in a row closes with 4029.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};

use super::commands;
use super::error::{close, ApiError};
use super::feed::{FeedError, Item};
use super::limits::{FrameLimiter, Verdict};
use super::opening::OpeningSlot;
use super::outbox::{slow_consumer, Out, Outbox};
use super::{App, ConnGuard};
use crate::auth::{self, AuthError, Identity};
use crate::metrics as m;
use crate::protocol::{self, ClientMsg, ControlMsg, ErrorCode};
use crate::settings::ms;

/// How long a closing socket waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Largest single frame the gateway writes (a snapshot of a long conversation is the largest).
const MAX_FRAME_OUT: usize = 16 * 1024 * 1024;

/// Bytes tungstenite gathers before it writes to the socket (below the configured maximum).
const WRITE_BUFFER: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub(super) struct WsQuery {
    session_id: Option<String>,
    /// The token (browsers cannot set headers on a WebSocket); or the `bearer.` subprotocol.
    token: Option<String>,
}

/// Authenticates and upgrades to a WebSocket, if a connection slot is free. Refusals are HTTP
/// responses with the `error` object, before any WebSocket exists.
pub(super) async fn upgrade(
    State(app): State<App>,
    q: Result<Query<WsQuery>, QueryRejection>,
    ip: super::opens::ClientIp,
    headers: HeaderMap,
    slot: Option<axum::Extension<OpeningSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::BadRequest("invalid query string".into()).into_response();
    };
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (sub_token, offers_v1) = auth::from_subprotocols(offered);
    let who = match super::authn::check(&app, q.token.as_deref().or(sub_token)).await {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if let Some(sid) = &q.session_id {
        if let Err(e) = super::authn::session_keys(&app, &who, sid) {
            return e.into_response();
        }
    }
    // A browser fails the handshake unless one offered subprotocol is echoed. Only the protocol
    // name is: a token echoed in a response header ends up in proxy and browser logs.
    let ws = match (offers_v1, sub_token) {
        (true, _) => ws.protocols([auth::SUBPROTOCOL]),
        (false, Some(_)) => {
            let msg = format!("offer `{}` next to the `bearer.` subprotocol", auth::SUBPROTOCOL);
            return ApiError::BadRequest(msg).into_response();
        }
        (false, None) => ws,
    };
    let guard = match app.admit("ws", &who, ip) {
        Ok(g) => g,
        Err(e @ ApiError::OpensLimited { .. }) => return super::opens::refuse_socket(&app, ws, e),
        Err(e) => return e.into_response(),
    };
    let limit = app.settings.gateway.max_frame_bytes;
    let queue = app.settings.gateway.send_queue_bytes;
    let read_buffer = app.settings.gateway.ws_read_buffer_bytes;
    // The opening slot stays taken until `welcome`: the 101 response alone would release it.
    let opening = slot.and_then(|s| s.take());
    let conn = Box::new(Conn { app, who, query_sid: q.session_id, opening, _guard: guard });
    // tungstenite flushes at `write_buffer_size` and refuses to grow past the max; the max must
    // exceed the flush threshold, so the threshold is derived from the configured bound.
    // A small read buffer: tungstenite allocates it per socket for the socket's whole life and
    // zero-fills it before every read, so the default (128 KiB) cost a third of gateway CPU in
    // memset and ~150 KB of RSS per idle socket (docs/benchmarks.md).
    ws.read_buffer_size(read_buffer)
        .max_frame_size(limit)
        .max_message_size(limit)
        .write_buffer_size((queue / 4).min(WRITE_BUFFER))
        // Every send is flushed before the next, so this buffer holds one frame at a time; its
        // maximum only has to admit the largest frame (a snapshot). The per-connection bound on
        // queued data is the hub queue (`gateway.send_queue_bytes`).
        .max_write_buffer_size(queue.max(MAX_FRAME_OUT))
        // No span for the socket's life: the subscriber keeps each open span's formatted fields
        // (~370 bytes per idle socket). The few events a socket logs name it themselves.
        .on_upgrade(move |socket| serve(socket, conn))
}

/// What a connection's task needs besides its socket, in one allocation: axum's task keeps the
/// upgrade callback's captures for the socket's whole life, so the callback captures this box
/// (one pointer) rather than the identity and the guard (twice their size, once there and once
/// in `serve`).
struct Conn {
    app: App,
    who: Identity,
    query_sid: Option<String>,
    /// The opening slot (`opening.rs`), released after `hello` is answered.
    opening: Option<OwnedSemaphorePermit>,
    /// Held for the connection's life: its slot is freed when the box is dropped.
    _guard: ConnGuard,
}

/// Why a socket loop ended, and the close frame to send (if any).
struct Ending(Option<(u16, &'static str)>);

/// The connection's task. An `async` block rather than an `async fn`: an async fn copies its
/// arguments into its own state, which held the socket (368 bytes) twice for the socket's life.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve(mut ws: WebSocket, mut conn: Box<Conn>) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let opening = conn.opening.take();
        // One task owns the socket, reading and writing it in turn: no split halves (their shared
        // lock is one more allocation per socket), and the task is the only one per connection.
        let ending = match session(&conn.app, &mut ws, &conn.who, conn.query_sid.as_deref(), opening).await {
            Ok(e) | Err(e) => e,
        };
        // Boxed like every rare step: the closing state would otherwise add to the idle task.
        let write_timeout = ms(conn.app.settings.gateway.write_timeout_ms);
        Box::pin(close_socket(&mut ws, ending, write_timeout)).await;
        drop(conn);
    }
}

/// Sends the close frame (if any) and completes the close handshake, briefly. Input the peer
/// keeps sending after that (the rest of an oversized frame) is discarded by the listener's
/// lingering close (`linger.rs`), so the peer reads this close instead of a TCP reset.
async fn close_socket(ws: &mut WebSocket, ending: Ending, write_timeout: Duration) {
    if let Some((code, reason)) = ending.0 {
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        if timeout(write_timeout, ws.send(Message::Close(Some(frame)))).await.is_ok() {
            // Read (and drop) until the peer's close frame.
            let _ = timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        }
    }
    let _ = timeout(CLOSE_LINGER, ws.close()).await;
}

/// The socket, read and written by its one task.
type Tx = WebSocket;

/// One step of the session loop that must wait (a write, a command): boxed, so that its state
/// is allocated while it runs instead of held inline by every idle connection's task.
type Job<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Ending>> + Send + 'a>>;

/// What woke the session loop.
enum Woke {
    Frame(Option<Result<Message, axum::Error>>),
    Out(Option<Out>),
    Mailbox,
    Timer,
}

/// The connection's life after the upgrade. Its future is the bulk of what an idle socket costs,
/// so only the waiting state stays inline (its size is asserted in a test): the socket's next
/// frame, the mailbox's one `Notify` (new events, a resync, shutdown) and one timer, shared by
/// the ping and the outbox's deadline (token expiry, a coalescing window). Everything that must
/// wait for something else (opening the session, a write, a client command, a log read) is
/// boxed while it runs.
async fn session(
    app: &App,
    tx: &mut Tx,
    who: &Identity,
    query_sid: Option<&str>,
    opening: Option<OwnedSemaphorePermit>,
) -> Result<Ending, Ending> {
    let g = &app.settings.gateway;
    let write_timeout = ms(g.write_timeout_ms);
    let mut limiter = FrameLimiter::new(&g.limits);
    // 1. hello, once: boxed, so its state is freed when the session loop starts.
    let mut outbox = Box::pin(hello(app, tx, who, query_sid, &mut limiter)).await?;
    drop(opening);

    // 2. the session loop
    let mailbox = outbox.mailbox();
    let ping_every = ms(g.ping_interval_ms);
    let mut last_heard = Instant::now();
    let mut ping_at = last_heard + ping_every;
    let mut due = earliest(ping_at, outbox.deadline());
    let timer = tokio::time::sleep_until(due);
    tokio::pin!(timer);
    // Whether the outbox may have output: set by a wake-up or its deadline, cleared when a step
    // finds nothing. While set, the loop steps the outbox (boxed) instead of waiting on the
    // mailbox, still racing client frames: a step is cancel-safe.
    let mut busy = true;
    loop {
        let job: Option<Job<'_>> = {
            let woke = tokio::select! {
                biased;
                incoming = tx.next() => Woke::Frame(incoming),
                out = async { Box::pin(outbox.step()).await }, if busy => Woke::Out(out),
                _ = mailbox.woken(), if !busy => Woke::Mailbox,
                _ = &mut timer => Woke::Timer,
            };
            match woke {
                Woke::Frame(incoming) => {
                    last_heard = Instant::now();
                    Some(Box::pin(on_frame(app, tx, who, &outbox, &mut limiter, incoming, write_timeout)))
                }
                Woke::Out(Some(out)) => Some(Box::pin(write_out(tx, &outbox, out, write_timeout))),
                Woke::Out(None) => {
                    busy = false;
                    None
                }
                Woke::Mailbox => {
                    busy = true;
                    None
                }
                Woke::Timer => {
                    let now = Instant::now();
                    busy |= outbox.deadline().is_some_and(|t| t <= now);
                    // The timer has fired: it must be set again even if `due` stays the same.
                    due = now;
                    if ping_at <= now {
                        ping_at = now + ping_every;
                        if now.duration_since(last_heard) > ms(g.pong_timeout_ms) {
                            return Ok(Ending(Some((close::TIMEOUT, "no pong in time"))));
                        }
                        let tx = &mut *tx;
                        Some(Box::pin(async move {
                            match timeout(write_timeout, tx.send(Message::Ping(Default::default()))).await {
                                Ok(Ok(())) => Ok(()),
                                _ => Err(Ending(None)),
                            }
                        }))
                    } else {
                        None
                    }
                }
            }
        };
        if let Some(job) = job {
            job.await?;
        }
        // A deadline already passed is the pending step's to act on (it checks the deadlines
        // each time it runs); armed again, the timer would fire at once for as long as that step
        // waits (a log read), and the loop would spin.
        let deadline = outbox.deadline().filter(|&d| !(busy && d <= Instant::now()));
        let next = earliest(ping_at, deadline);
        if next != due {
            due = next;
            timer.as_mut().reset(due);
        }
    }
}

/// The earlier of the next ping and the outbox's deadline.
fn earliest(ping_at: Instant, deadline: Option<Instant>) -> Instant {
    deadline.map_or(ping_at, |d| d.min(ping_at))
}

/// Handles one client frame: counts it against the connection's rate, then answers it.
async fn on_frame(
    app: &App,
    tx: &mut Tx,
    who: &Identity,
    outbox: &Outbox,
    limiter: &mut FrameLimiter,
    incoming: Option<Result<Message, axum::Error>>,
    write_timeout: Duration,
) -> Result<(), Ending> {
    let is_data = matches!(incoming, Some(Ok(Message::Text(_) | Message::Binary(_))));
    if is_data {
        if let Verdict::Limited { retry_after_ms } = limiter.check() {
            let e = ApiError::RateLimited { retry_after_ms };
            metrics::counter!(m::GATEWAY_REJECTED, "code" => code_label(e.code())).increment(1);
            send_control(tx, &e.to_control(), write_timeout).await?;
            return strike(limiter, true);
        }
    }
    let refused = match read_frame(incoming) {
        Ok(ClientMsg::Hello { .. }) => {
            let e = ApiError::BadRequest("hello was already received".into());
            send_control(tx, &e.to_control(), write_timeout).await?;
            true
        }
        Ok(msg) => {
            let (reply, refused) = commands::handle(app, who, outbox.keys(), msg).await;
            if let Some(reply) = reply {
                send_control(tx, &reply, write_timeout).await?;
            }
            refused
        }
        Err(FrameError::Closed) => return Err(Ending(None)),
        Err(FrameError::Ignore) => false,
        Err(FrameError::Fatal(code, msg, close)) => return Err(reject(tx, code, &msg, close, write_timeout).await),
        Err(FrameError::Bad(code, msg)) => {
            metrics::counter!(m::GATEWAY_REJECTED, "code" => code_label(code)).increment(1);
            let e = ControlMsg::Error { code, message: msg, retry_after_ms: None };
            send_control(tx, &e, write_timeout).await?;
            true
        }
    };
    if is_data {
        strike(limiter, refused)?;
    }
    Ok(())
}

/// Waits for `hello`, opens the session, and sends `welcome` with the replay or snapshot.
async fn hello(
    app: &App,
    tx: &mut Tx,
    who: &Identity,
    query_sid: Option<&str>,
    limiter: &mut FrameLimiter,
) -> Result<Outbox, Ending> {
    let g = &app.settings.gateway;
    let write_timeout = ms(g.write_timeout_ms);
    let expired = expiry_timer(who.time_left());
    tokio::pin!(expired);
    let hello = tokio::select! {
        r = timeout(ms(g.hello_timeout_ms), tx.next()) => r.map_err(|_| Ending(Some((close::TIMEOUT, "no hello in time"))))?,
        _ = app.shutdown.cancelled() => return Err(Ending(Some((close::GOING_AWAY, "draining")))),
        _ = &mut expired => return Err(token_expired(tx, write_timeout).await),
    };
    limiter.check();
    let refuse = |e: ApiError| (e.code(), e.to_string(), close::PROTOCOL);
    let first_frame = || refuse(ApiError::BadRequest("the first frame must be hello".into()));
    let hello = match read_frame(hello) {
        Ok(ClientMsg::Hello { session_id, epoch, last_seq, coalesce_ms }) => {
            if query_sid.is_some_and(|q| q != session_id) {
                Err(refuse(ApiError::BadRequest("hello.session_id differs from the URL".into())))
            } else {
                match super::authn::session_keys(app, who, &session_id) {
                    Ok(keys) => Ok((keys, session_id, epoch, last_seq, coalesce_ms)),
                    Err(e @ ApiError::Forbidden(_)) => Err((e.code(), e.to_string(), close::POLICY)),
                    Err(e) => Err(refuse(e)),
                }
            }
        }
        Ok(_) | Err(FrameError::Ignore) => Err(first_frame()),
        Err(FrameError::Closed) => return Err(Ending(None)),
        Err(FrameError::Bad(code, msg)) => Err((code, msg, close::PROTOCOL)),
        Err(FrameError::Fatal(code, msg, close)) => Err((code, msg, close)),
    };
    let (keys, session_id, epoch, last_seq, coalesce) = match hello {
        Ok(h) => h,
        Err((code, msg, close)) => return Err(reject(tx, code, &msg, close, write_timeout).await),
    };
    let coalesce = ms(coalesce.unwrap_or(0).min(g.max_client_coalesce_ms));
    let actor = who.actor(&session_id, app.settings.session.bind_to_user);
    let (feed, opening) = match Box::pin(super::conversations::open_feed(
        app,
        who,
        keys,
        &session_id,
        epoch.as_deref(),
        last_seq,
        true,
        actor,
    ))
    .await
    {
        Ok(f) => f,
        Err(FeedError::Forbidden) => {
            let e = ApiError::Forbidden("this session belongs to another user".into());
            return Err(reject(tx, e.code(), &e.to_string(), close::POLICY, write_timeout).await);
        }
        Err(e) => {
            tracing::error!(error = %e, transport = "ws", "cannot open session");
            let msg = "the session cannot be opened now";
            return Err(reject(tx, ErrorCode::Unavailable, msg, close::UNAVAILABLE, write_timeout).await);
        }
    };
    if matches!(&opening.first, Item::Snapshot(ControlMsg::Snapshot { reason, .. }) if reason == "future") {
        // The client claims events the session never had: say so plainly, then resync it.
        let e = ApiError::BadRequest("hello.last_seq is ahead of the session; a snapshot follows".into());
        send_control(tx, &e.to_control(), write_timeout).await?;
    }
    let outbox = Outbox::new(feed, app.shutdown.clone(), who.time_left(), coalesce);
    send_control(tx, &opening.welcome, write_timeout).await?;
    write_out(tx, &outbox, outbox.first(opening.first), write_timeout).await?;
    Ok(outbox)
}

/// Records a frame's fate; a connection refused too often in a row is closed (4029).
fn strike(limiter: &mut FrameLimiter, refused: bool) -> Result<(), Ending> {
    if limiter.record(refused) {
        metrics::counter!(m::GATEWAY_POLICY_CLOSES, "reason" => "rejected_frames").increment(1);
        return Err(Ending(Some((close::ABUSE, "too many refused frames"))));
    }
    Ok(())
}

/// Completes when a token with `left` to live expires; never, for a token without expiry.
async fn expiry_timer(left: Option<Duration>) {
    match left {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn token_expired(tx: &mut Tx, write_timeout: Duration) -> Ending {
    metrics::counter!(m::GATEWAY_POLICY_CLOSES, "reason" => "token_expired").increment(1);
    let e = ApiError::Unauthorized(AuthError::Expired);
    let _ = send_control(tx, &e.to_control(), write_timeout).await;
    Ending(Some((close::TOKEN_EXPIRED, "token expired")))
}

/// Writes what the outbox yielded; an [`End`](super::outbox::End) ends the connection.
async fn write_out(tx: &mut Tx, outbox: &Outbox, out: Out, write_timeout: Duration) -> Result<(), Ending> {
    match out {
        Out::Control(msg) => send_control(tx, &msg, write_timeout).await,
        Out::Events(batch) => {
            for f in &batch.frames {
                // A write stuck on a client that stopped reading gives way to the overflow
                // signal, so the 4008 close is queued behind what the client has not read yet.
                tokio::select! {
                    biased;
                    r = write(tx, Message::Text(f.json.clone()), write_timeout) => r?,
                    _ = outbox.overflowed() => return Err(Ending(Some(slow_consumer().close))),
                }
            }
            Ok(())
        }
        Out::End(end) => {
            if let Some(last) = end.last {
                let _ = send_control(tx, &last, write_timeout).await;
            }
            Err(Ending(Some(end.close)))
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

/// Sends an error and ends the connection with `close`.
async fn reject(tx: &mut Tx, code: ErrorCode, message: &str, close: u16, write_timeout: Duration) -> Ending {
    metrics::counter!(m::GATEWAY_REJECTED, "code" => code_label(code)).increment(1);
    if matches!(close, close::POLICY | close::INVALID_DATA) {
        let reason = if close == close::POLICY { "forbidden" } else { "invalid_utf8" };
        metrics::counter!(m::GATEWAY_POLICY_CLOSES, "reason" => reason).increment(1);
    }
    let msg = ControlMsg::Error { code, message: message.to_string(), retry_after_ms: None };
    let _ = send_control(tx, &msg, write_timeout).await;
    Ending(Some((close, "refused")))
}

enum FrameError {
    Closed,
    Ignore,
    /// Refused; the connection stays open.
    Bad(ErrorCode, String),
    /// Refused, and the connection closes with this code.
    Fatal(ErrorCode, String, u16),
}

fn read_frame(msg: Option<Result<Message, axum::Error>>) -> Result<ClientMsg, FrameError> {
    match msg {
        None => Err(FrameError::Closed),
        Some(Err(e)) => {
            // axum hides tungstenite's error type behind its own, so its text is all there is.
            let text = e.to_string();
            tracing::debug!(error = %text, "websocket read error");
            if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                Err(FrameError::Fatal(ErrorCode::TooLarge, "frame exceeds the size limit".into(), close::TOO_LARGE))
            } else if text.contains("UTF-8") {
                Err(FrameError::Fatal(
                    ErrorCode::BadRequest,
                    "text frame is not valid UTF-8".into(),
                    close::INVALID_DATA,
                ))
            } else if text.contains("protocol error") {
                Err(FrameError::Fatal(ErrorCode::BadRequest, "WebSocket protocol violation".into(), close::PROTOCOL))
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
        ErrorCode::QuotaExceeded => "quota_exceeded",
        ErrorCode::TooManyConnections => "too_many_connections",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most bytes the task of one connection may hold inline (docs/benchmarks.md; 2,632 B before
    /// the waiting state was folded into one `Notify` and one timer).
    const CONNECTION_FUTURE_CEILING: usize = 1200;

    /// The size of the future a function of two arguments returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_connection_future_stays_within_its_ceiling() {
        // What every idle socket's task holds inline, for the socket's whole life: the rare,
        // large steps are boxed where they are awaited, so a regression that inlines one (or
        // adds a timer or buffer to the waiting state) fails here first.
        let size = future_size(serve);
        let parts = [
            ("WebSocket", std::mem::size_of::<WebSocket>()),
            ("Outbox", std::mem::size_of::<Outbox>()),
            ("Conn (boxed)", std::mem::size_of::<Conn>()),
            ("FrameLimiter", std::mem::size_of::<FrameLimiter>()),
            ("Sleep", std::mem::size_of::<tokio::time::Sleep>()),
        ];
        assert!(size <= CONNECTION_FUTURE_CEILING, "the connection future is {size} bytes; of its parts: {parts:?}");
    }
}

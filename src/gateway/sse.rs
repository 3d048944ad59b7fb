//! Server-sent events and long-poll: `GET /v1/sessions/{id}/events`.
//!
//! With `Accept: text/event-stream` the response is an SSE stream: each event with `id: <seq>`,
//! control frames as `event: control`, comment heartbeats, and resume from `Last-Event-ID` (or
//! `?last_seq=`) with `?epoch=`. Otherwise it is a long-poll: the events after `?after=` as soon as
//! there are any, or an empty list when `?wait_ms=` runs out. Both read through the same
//! [`Feed`] as the WebSocket, so the resume rules are the same.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::authn::{identify, session_keys, Source};
use super::error::ApiError;
use super::feed::{merge_deltas, Feed, FeedError, Item, Opening};
use super::opens::ClientIp;
use super::App;
use crate::auth::{AuthError, Identity};
use crate::protocol::{self, ControlMsg};
use crate::settings::ms;

/// SSE events buffered between the feed task and the response body; the feed's own queue is
/// the real bound, this only decouples the two.
const SSE_BUFFER: usize = 16;

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    /// Long-poll: the last seq the client has.
    after: Option<u64>,
    /// SSE: the last seq the client has (when it cannot set `Last-Event-ID`).
    last_seq: Option<u64>,
    epoch: Option<String>,
    /// Long-poll: how long to wait for events.
    wait_ms: Option<u64>,
    /// The token, for clients that cannot set `Authorization` (EventSource).
    token: Option<String>,
}

pub(super) async fn events(
    State(app): State<App>,
    Path(session_id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    ip: ClientIp,
    headers: HeaderMap,
) -> Response {
    let wants_sse =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    let run = async {
        // A fixed message: the rejection's text could quote the query, token included.
        let Query(q) =
            q.map_err(|_| ApiError::BadRequest("invalid query: after, last_seq and wait_ms are integers".into()))?;
        let who = identify(&app, &headers, Source::HeaderOrQuery(q.token.as_deref())).await?;
        if wants_sse {
            sse(app, who, session_id, q, ip, &headers).await
        } else {
            long_poll(app, who, session_id, q, ip).await
        }
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

async fn sse(
    app: App,
    who: Identity,
    session_id: String,
    q: EventsQuery,
    ip: ClientIp,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let keys = session_keys(&app, &who, &session_id)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().map_err(|_| ApiError::BadRequest("Last-Event-ID must be a seq".into())))
        .transpose()?;
    let last_seq = last_event_id.or(q.last_seq);
    let guard = app.admit("sse", &who, ip)?;
    let actor = who.actor(&session_id, app.settings.session.bind_to_user);
    let (feed, opening) =
        Box::pin(Feed::open(&app.hub, &app.store, keys, &session_id, q.epoch.as_deref(), last_seq, true, actor))
            .await
            .map_err(feed_error)?;
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(SSE_BUFFER);
    let task_app = app.clone();
    let expiry = who.time_left();
    tokio::spawn(async move {
        pump(task_app, feed, opening, tx, expiry).await;
        drop(guard);
    });
    let keep_alive = KeepAlive::new().interval(ms(app.settings.gateway.sse_heartbeat_ms)).text("hb");
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(keep_alive).into_response())
}

/// Moves the feed into the SSE body until the client leaves, the gateway drains, or the token
/// expires (then an `error{unauthorized}` control event ends the stream).
async fn pump(
    app: App,
    mut feed: Feed,
    opening: Opening,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
    expiry: Option<Duration>,
) {
    let write_timeout = ms(app.settings.gateway.write_timeout_ms);
    let expired = super::ws::expiry_timer(expiry);
    tokio::pin!(expired);
    if send_control(&tx, &opening.welcome, write_timeout).await.is_err() {
        return;
    }
    let mut next = Some(opening.first);
    loop {
        let item = match next.take() {
            Some(i) => i,
            None => tokio::select! {
                biased;
                _ = app.shutdown.cancelled() => {
                    let _ = send_control(&tx, &ControlMsg::Reconnect { reason: "draining".into() }, write_timeout).await;
                    return;
                }
                _ = tx.closed() => return,
                _ = &mut expired => {
                    let e = ApiError::Unauthorized(AuthError::Expired);
                    let _ = send_control(&tx, &e.to_control(), write_timeout).await;
                    return;
                }
                r = feed.next() => match r {
                    Ok(i) => i,
                    Err(FeedError::Overflow) => {
                        metrics::counter!(crate::metrics::GATEWAY_SLOW_CLOSES).increment(1);
                        return;
                    }
                    Err(FeedError::Store(e)) => {
                        tracing::error!(error = %e, "SSE feed failed");
                        return;
                    }
                    Err(FeedError::Forbidden) => return,
                },
            },
        };
        let sent = match item {
            Item::Snapshot(s) => send_control(&tx, &s, write_timeout).await,
            Item::Frames(frames) => {
                let queued: usize = frames.iter().map(|f| f.json.len()).sum();
                let mut r = Ok(());
                for f in merge_deltas(frames) {
                    let ev = SseEvent::default().id(f.seq.to_string()).data(&*f.json);
                    r = push(&tx, ev, write_timeout).await;
                    if r.is_err() {
                        break;
                    }
                }
                feed.written(queued);
                r
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn send_control(
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
    msg: &ControlMsg,
    write_timeout: Duration,
) -> Result<(), ()> {
    push(tx, SseEvent::default().event("control").data(protocol::encode(msg)), write_timeout).await
}

async fn push(
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
    ev: SseEvent,
    write_timeout: Duration,
) -> Result<(), ()> {
    match tokio::time::timeout(write_timeout, tx.send(Ok(ev))).await {
        Ok(Ok(())) => {
            metrics::counter!(crate::metrics::GATEWAY_FRAMES_OUT).increment(1);
            Ok(())
        }
        _ => Err(()),
    }
}

/// Long-poll: one response with the events after `after`, waiting up to `wait_ms` for some.
async fn long_poll(
    app: App,
    who: Identity,
    session_id: String,
    q: EventsQuery,
    ip: ClientIp,
) -> Result<Response, ApiError> {
    let keys = session_keys(&app, &who, &session_id)?;
    let wait = ms(q.wait_ms.unwrap_or(0).min(app.settings.gateway.longpoll_max_wait_ms));
    // A poll never outlives its token.
    let wait = who.time_left().map_or(wait, |left| wait.min(left));
    let _guard = app.admit("poll", &who, ip)?;
    let actor = who.actor(&session_id, app.settings.session.bind_to_user);
    let (mut feed, opening) =
        Box::pin(Feed::open(&app.hub, &app.store, keys, &session_id, q.epoch.as_deref(), q.after, false, actor))
            .await
            .map_err(feed_error)?;
    let ControlMsg::Welcome { epoch, seq, .. } = opening.welcome else { unreachable!("open returns welcome") };
    let mut item = opening.first;
    if matches!(&item, Item::Frames(f) if f.is_empty()) && !wait.is_zero() {
        tokio::select! {
            r = tokio::time::timeout(wait, feed.next()) => {
                if let Ok(r) = r {
                    item = r.map_err(feed_error)?;
                }
            }
            _ = app.shutdown.cancelled() => {}
        }
    }
    let body = match item {
        Item::Snapshot(s) => format!(r#"{{"snapshot":{}}}"#, protocol::encode(&s)),
        Item::Frames(frames) => {
            let last = frames.last().map_or(seq, |f| f.seq);
            let events: Vec<&str> = frames.iter().map(|f| &*f.json).collect();
            format!(r#"{{"epoch":{},"seq":{},"events":[{}]}}"#, protocol::encode(&epoch), last, events.join(","))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response())
}

/// The refusal a failed session open becomes on an HTTP route.
pub(super) fn feed_error(e: FeedError) -> ApiError {
    match e {
        FeedError::Store(s) => ApiError::Store(s),
        FeedError::Overflow => ApiError::Overloaded("too many events at once; retry"),
        FeedError::Forbidden => ApiError::Forbidden("this session belongs to another user".into()),
    }
}

//! Server-sent events and long-poll: `GET /v1/sessions/{id}/events`.
//!
//! With `Accept: text/event-stream` the response is an SSE stream: each event with
//! `id: <epoch>:<seq>`, control frames as `event: control`, comment heartbeats, and resume from
//! `Last-Event-ID` (which a browser's `EventSource` sends by itself when it reconnects; a bare
//! `<seq>` is accepted too, with `?epoch=`) or `?last_seq=` with `?epoch=`. Otherwise it is a long-poll: the events after `?after=` as soon as
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
use super::feed::{FeedError, Item, Opening};
use super::opens::ClientIp;
use super::outbox::{Out, Outbox};
use super::App;
use crate::auth::Identity;
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
    let last_event_id = headers.get("last-event-id").map(|v| v.to_str().map_err(|_| ()).and_then(parse_event_id));
    let last_event_id = last_event_id
        .transpose()
        .map_err(|_| ApiError::BadRequest("Last-Event-ID must be <epoch>:<seq> or <seq>".into()))?;
    // The browser's automatic reconnect sends only `Last-Event-ID` (on the URL it first used), so
    // the id's own epoch wins over the query's.
    let (epoch, last_seq) = match last_event_id {
        Some((Some(epoch), seq)) => (Some(epoch), Some(seq)),
        Some((None, seq)) => (q.epoch, Some(seq)),
        None => (q.epoch, q.last_seq),
    };
    let guard = app.admit("sse", &who, ip)?;
    let actor = who.actor(&session_id, app.settings.session.bind_to_user);
    let (feed, opening) = Box::pin(super::conversations::open_feed(
        &app,
        &who,
        keys,
        &session_id,
        epoch.as_deref(),
        last_seq,
        true,
        actor,
    ))
    .await
    .map_err(feed_error)?;
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(SSE_BUFFER);
    let outbox = Outbox::new(feed, app.shutdown.clone(), who.time_left(), Duration::ZERO);
    let task_app = app.clone();
    tokio::spawn(async move {
        pump(task_app, outbox, opening, tx).await;
        drop(guard);
    });
    let keep_alive = KeepAlive::new().interval(ms(app.settings.gateway.sse_heartbeat_ms)).text("hb");
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(keep_alive).into_response())
}

/// Parses a `Last-Event-ID`: `<epoch>:<seq>` as this gateway sends it, or a bare `<seq>` (older
/// clients, `?last_seq=` style).
fn parse_event_id(v: &str) -> Result<(Option<String>, u64), ()> {
    let v = v.trim();
    match v.rsplit_once(':') {
        Some((epoch, seq)) if !epoch.is_empty() => Ok((Some(epoch.to_string()), seq.parse().map_err(|_| ())?)),
        Some(_) => Err(()),
        None => Ok((None, v.parse().map_err(|_| ())?)),
    }
}

/// The SSE `id:` of a frame: the epoch with the seq, so that a plain `EventSource` resumes with
/// a replay, not a snapshot.
fn event_id(epoch: &str, seq: u64) -> String {
    format!("{epoch}:{seq}")
}

/// Moves the outbox into the SSE body until the client leaves or the outbox ends the stream
/// (drain, token expiry, a slow reader, a failed feed).
async fn pump(app: App, mut outbox: Outbox, opening: Opening, tx: mpsc::Sender<Result<SseEvent, Infallible>>) {
    let write_timeout = ms(app.settings.gateway.write_timeout_ms);
    // The welcome carries no id: a replay follows it, and the browser must resume before that.
    let retry = ms(app.settings.gateway.sse_retry_ms);
    let welcome = control_event(&opening.welcome).retry(retry);
    if push(&tx, welcome, write_timeout).await.is_err() {
        return;
    }
    let mut next = Some(outbox.first(opening.first));
    loop {
        let out = match next.take() {
            Some(o) => o,
            None => tokio::select! {
                biased;
                _ = tx.closed() => return,
                o = outbox.next() => o,
            },
        };
        let sent = match out {
            Out::Control(msg) => {
                // A snapshot is the state up to its seq: resuming after it is right.
                let ev = match &msg {
                    ControlMsg::Snapshot { epoch, seq, .. } => control_event(&msg).id(event_id(epoch, *seq)),
                    _ => control_event(&msg),
                };
                push(&tx, ev, write_timeout).await
            }
            Out::Events(batch) => {
                let mut r = Ok(());
                for f in &batch.frames {
                    let ev = SseEvent::default().id(event_id(outbox.epoch(), f.seq)).data(&*f.json);
                    r = push(&tx, ev, write_timeout).await;
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            Out::End(end) => {
                if let Some(last) = end.last {
                    let _ = push(&tx, control_event(&last), write_timeout).await;
                }
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn control_event(msg: &ControlMsg) -> SseEvent {
    SseEvent::default().event("control").data(protocol::encode(msg))
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
    let (mut feed, opening) = Box::pin(super::conversations::open_feed(
        &app,
        &who,
        keys,
        &session_id,
        q.epoch.as_deref(),
        q.after,
        false,
        actor,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_the_epoch_and_the_seq_and_a_bare_seq_is_still_accepted() {
        assert_eq!(parse_event_id(&event_id("e1f3", 32)), Ok((Some("e1f3".to_string()), 32)));
        assert_eq!(parse_event_id(" 32 "), Ok((None, 32)));
        for bad in ["", "x", ":32", "e1:", "e1:x", "e1:-1"] {
            assert_eq!(parse_event_id(bad), Err(()), "{bad:?}");
        }
    }
}

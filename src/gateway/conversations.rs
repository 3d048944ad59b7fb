//! The conversations API over the archive (docs/protocol.md, "Conversations"), scoped to the
//! caller's tenant and user, and the restore of a session Redis no longer has.
//!
//! - `GET /v1/sessions`: the caller's conversations, newest activity first (`limit`, `cursor`);
//! - `GET /v1/sessions/{id}/messages`: a page of messages, oldest first (`limit`, `before`);
//! - `PATCH /v1/sessions/{id}`: `{"title": …}`;
//! - `DELETE /v1/sessions/{id}`: erasure of the Redis keys and the archive rows;
//! - `GET /v1/export`: every conversation of the caller with its messages, as JSON.
//!
//! A session another user or tenant owns is `not_found`, like one that does not exist, so ids
//! reveal nothing. Without an archive (`archive.url` empty) every route answers `not_found`, and
//! the chat page keeps its local list.
//!
//! Titles: the archive sets the first words of the first message; a model-made title would be
//! written by a job after the first turn (see the `sessions.title_source` column), never here.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::authn::session_keys;
use super::error::ApiError;
use super::feed::{Feed, FeedError, Item, Opening};
use super::rest::caller;
use super::App;
use crate::archive::reader::{Message, SessionInfo};
use crate::archive::Archive;
use crate::auth::Identity;
use crate::keys::{is_valid_component, SessionKeys};
use crate::metrics as m;
use crate::protocol::ControlMsg;
use crate::settings::ms;

/// Longest title, in characters.
const TITLE_MAX_CHARS: usize = 200;

fn archive_of(app: &App) -> Result<&Archive, ApiError> {
    app.archive.as_ref().ok_or_else(|| ApiError::NotFound("no archive is configured on this server".into()))
}

fn not_found(session_id: &str) -> ApiError {
    ApiError::NotFound(format!("no conversation {session_id}"))
}

fn page_size(app: &App, limit: Option<u32>) -> Result<u32, ApiError> {
    let max = app.settings.archive.page_max;
    match limit {
        None => Ok(max.min(50)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!("limit must be 1..={max}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct SessionList {
    sessions: Vec<SessionInfo>,
    /// Pass as `cursor` for the next page; absent after the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/sessions`.
pub(super) async fn list(State(app): State<App>, headers: HeaderMap, q: Query<ListQuery>) -> Response {
    respond(async {
        let who = caller(&app, &headers).await?;
        let archive = archive_of(&app)?;
        let limit = page_size(&app, q.limit)?;
        let after = q.cursor.as_deref().map(parse_cursor).transpose()?;
        let sessions = archive.list_sessions(&who.tenant, &who.user, limit, after).await?;
        let next_cursor = (sessions.len() == limit as usize)
            .then(|| sessions.last().map(|s| format!("{}.{}", s.last_activity_ms, s.id)))
            .flatten();
        Ok(Json(SessionList { sessions, next_cursor }).into_response())
    })
    .await
}

/// A list cursor: `<last_activity_ms>.<session id>`.
fn parse_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this server gave".into());
    let (at, id) = c.split_once('.').ok_or_else(bad)?;
    let at = at.parse().map_err(|_| bad())?;
    if !is_valid_component(id) {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    limit: Option<u32>,
    before: Option<String>,
}

/// `GET /v1/sessions/{id}/messages`.
pub(super) async fn messages(
    State(app): State<App>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    q: Query<MessagesQuery>,
) -> Response {
    respond(async {
        let who = caller(&app, &headers).await?;
        let archive = archive_of(&app)?;
        session_keys(&app, &who, &session_id)?;
        let limit = page_size(&app, q.limit)?;
        if q.before.as_deref().is_some_and(|b| !is_valid_component(b)) {
            return Err(ApiError::BadRequest("before must be a turn id".into()));
        }
        let page = archive
            .messages(&who.tenant, &who.user, &session_id, limit, q.before.as_deref())
            .await?
            .ok_or_else(|| not_found(&session_id))?;
        Ok(Json(page).into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    title: String,
}

/// `PATCH /v1/sessions/{id}` → the conversation.
pub(super) async fn patch(
    State(app): State<App>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(async {
        let who = caller(&app, &headers).await?;
        let archive = archive_of(&app)?;
        session_keys(&app, &who, &session_id)?;
        let body: PatchBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        let title = body.title.trim();
        if title.is_empty() || title.chars().count() > TITLE_MAX_CHARS {
            return Err(ApiError::BadRequest(format!("title must be 1-{TITLE_MAX_CHARS} characters")));
        }
        if !archive.set_title(&who.tenant, &who.user, &session_id, title).await? {
            return Err(not_found(&session_id));
        }
        let info = archive.session(&who.tenant, &who.user, &session_id).await?.ok_or_else(|| not_found(&session_id))?;
        Ok(Json(info).into_response())
    })
    .await
}

/// `DELETE /v1/sessions/{id}` → 204: the conversation is erased from Redis and the archive.
/// Redis first: once its keys and unarchived entries are gone, nothing can bring rows back
/// (the archive refuses turns that finished before the erasure's time).
pub(super) async fn delete(State(app): State<App>, Path(session_id): Path<String>, headers: HeaderMap) -> Response {
    respond(async {
        let who = caller(&app, &headers).await?;
        let archive = archive_of(&app)?;
        let keys = session_keys(&app, &who, &session_id)?;
        if archive.session(&who.tenant, &who.user, &session_id).await?.is_none() {
            return Err(not_found(&session_id));
        }
        let erased = app.store.erase_session(&keys, app.settings.archive.erase_scan_max).await?;
        let turns = archive.erase(&who.tenant, &session_id, erased.at_ms).await?;
        tracing::info!(keys = erased.keys, entries = erased.archive_entries, turns, "conversation erased");
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

#[derive(Debug, Serialize)]
struct ExportedSession {
    #[serde(flatten)]
    info: SessionInfo,
    messages: Vec<Message>,
}

#[derive(Debug, Serialize)]
struct Export {
    tenant: String,
    user: String,
    /// True when `archive.export_max_turns` cut the export short.
    truncated: bool,
    sessions: Vec<ExportedSession>,
}

/// `GET /v1/export`: the caller's data as one JSON document.
pub(super) async fn export(State(app): State<App>, headers: HeaderMap) -> Response {
    respond(async {
        let who = caller(&app, &headers).await?;
        let archive = archive_of(&app)?;
        let (sessions, truncated) =
            archive.export(&who.tenant, &who.user, app.settings.archive.export_max_turns).await?;
        let sessions = sessions.into_iter().map(|(info, messages)| ExportedSession { info, messages }).collect();
        let mut r =
            Json(Export { tenant: who.tenant.clone(), user: who.user.clone(), truncated, sessions }).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_DISPOSITION,
            axum::http::HeaderValue::from_static("attachment; filename=\"chatfleet-export.json\""),
        );
        Ok(r)
    })
    .await
}

async fn respond(run: impl std::future::Future<Output = Result<Response, ApiError>>) -> Response {
    match run.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Opens a feed like [`Feed::open`]; when the session turns out empty (Redis lost or expired
/// it) and the archive holds it for this user, rebuilds it from the archive first ([`restore`])
/// and opens again, so the snapshot holds the archived messages.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_feed(
    app: &App,
    who: &Identity,
    keys: SessionKeys,
    session_id: &str,
    epoch: Option<&str>,
    last_seq: Option<u64>,
    attach: bool,
    actor: &str,
) -> Result<(Feed, Opening), FeedError> {
    let opened =
        Box::pin(Feed::open(&app.hub, &app.store, keys.clone(), session_id, epoch, last_seq, attach, actor)).await?;
    let empty = matches!(&opened.1.first,
        Item::Snapshot(ControlMsg::Snapshot { seq: 0, messages, active: None, .. }) if messages.is_empty());
    if app.archive.is_none() || !empty || !restore(app, who, &keys, actor).await? {
        return Ok(opened);
    }
    drop(opened);
    Box::pin(Feed::open(&app.hub, &app.store, keys, session_id, epoch, last_seq, attach, actor)).await
}

/// Rebuilds a session Redis lost (it expired, or Redis restarted empty) from the archive, if the
/// archive holds it for this user: history and summary under a new epoch. True when restored.
/// Called when an open finds the session empty, or a send finds it missing.
///
/// The archive is asked for at most `archive.restore_timeout_ms`: past it, or with PostgreSQL
/// down, the session goes on empty, as it would without an archive.
pub(super) async fn restore(
    app: &App,
    who: &Identity,
    keys: &SessionKeys,
    actor: &str,
) -> Result<bool, crate::store::StoreError> {
    let Some(archive) = app.archive.as_ref() else { return Ok(false) };
    let hist_max = app.settings.session.history_max_messages;
    let found = tokio::time::timeout(
        ms(app.settings.archive.restore_timeout_ms),
        archive.restorable(&who.tenant, &who.user, keys.session_id(), hist_max),
    )
    .await;
    let result = match found {
        Ok(Ok(Some(r))) => {
            let new_epoch = uuid::Uuid::new_v4().simple().to_string();
            let summary = r.summary.as_ref().map(|(upto, text)| (upto.as_str(), text.as_str(), ""));
            match app.store.restore_session(keys, &new_epoch, actor, &r.history, summary).await? {
                true => "restored",
                // A send got in first: the session is live again, as the client will see.
                false => "raced",
            }
        }
        Ok(Ok(None)) => "missing",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "archive unavailable; the session goes on empty");
            "failed"
        }
        Err(_) => {
            tracing::warn!("archive too slow; the session goes on empty");
            "failed"
        }
    };
    metrics::counter!(m::ARCHIVE_RESTORES, "result" => result).increment(1);
    Ok(result == "restored")
}

//! The knowledge API (docs/protocol.md, "Knowledge"): documents of the caller's tenant's
//! collections, for retrieval (`crate::retrieval`).
//!
//! - `POST /v1/knowledge/{collection}/documents` `{id, title?, text}`: stores (or replaces) a
//!   document, chunked and indexed → `{id, chunks, bytes, created}`;
//! - `GET /v1/knowledge/{collection}/documents` (`limit`, `after`): a page of documents by id;
//! - `DELETE /v1/knowledge/{collection}/documents/{id}` → 204;
//! - `GET /v1/knowledge/{collection}/search?q=…`: the chunks a turn would get, best first.
//!
//! Every route needs a token whose `scope` claim holds `retrieval.manage_scope` (anyone in dev
//! mode), works on the caller's tenant only, and answers `not_found` without an archive.
//! Bodies up to `retrieval.max_document_bytes` of text are accepted (plus JSON framing).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::rest::caller;
use super::App;
use crate::auth::{AuthMode, Identity};
use crate::keys::is_valid_component;
use crate::retrieval::chunk::Chunker;
use crate::retrieval::store::{DocumentInfo, Knowledge, PutError};
use crate::retrieval::RetrievalSettings;

/// Longest title, in characters.
const TITLE_MAX_CHARS: usize = 200;
/// Room for the JSON around a document's text (id, title, escapes are counted in the text).
const FRAMING_BYTES: usize = 64 * 1024;

pub(super) fn router(s: &RetrievalSettings) -> Router<App> {
    // JSON escapes can double a text's size; the text itself is checked against the limit.
    let limit = DefaultBodyLimit::max(s.max_document_bytes * 2 + FRAMING_BYTES);
    Router::new()
        .route("/v1/knowledge/{collection}/documents", get(list).post(put).layer(limit))
        .route("/v1/knowledge/{collection}/documents/{id}", delete(remove))
        .route("/v1/knowledge/{collection}/search", get(search))
}

/// The caller, its collection, and the store, once the caller may manage knowledge.
async fn open(app: &App, headers: &HeaderMap, collection: &str) -> Result<(Identity, Knowledge), ApiError> {
    let who = caller(app, headers).await?;
    let archive =
        app.archive.as_ref().ok_or_else(|| ApiError::NotFound("no archive is configured on this server".into()))?;
    let scope = &app.settings.retrieval.manage_scope;
    if app.auth.mode() == AuthMode::Jwt && !who.has_scope(scope) {
        return Err(ApiError::Forbidden(format!("the knowledge API needs the `{scope}` scope")));
    }
    if !is_valid_component(collection) {
        return Err(ApiError::BadRequest("a collection name is 1-64 characters of [A-Za-z0-9_.-]".into()));
    }
    Ok((who, Knowledge::new(archive.pool().clone())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDocument {
    id: String,
    #[serde(default)]
    title: String,
    text: String,
}

#[derive(Debug, Serialize)]
struct Stored {
    id: String,
    chunks: usize,
    bytes: usize,
    /// False when the document replaced an earlier version of the same id.
    created: bool,
}

/// `POST /v1/knowledge/{collection}/documents`.
async fn put(State(app): State<App>, Path(collection): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    respond(async {
        let (who, knowledge) = open(&app, &headers, &collection).await?;
        let r = &app.settings.retrieval;
        let doc: NewDocument =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        if !is_valid_component(&doc.id) {
            return Err(ApiError::BadRequest("a document id is 1-64 characters of [A-Za-z0-9_.-]".into()));
        }
        if doc.title.chars().count() > TITLE_MAX_CHARS {
            return Err(ApiError::BadRequest(format!("title must be at most {TITLE_MAX_CHARS} characters")));
        }
        if doc.text.len() > r.max_document_bytes {
            return Err(ApiError::TooLarge(format!("text is over {} bytes", r.max_document_bytes)));
        }
        if doc.text.trim().is_empty() {
            return Err(ApiError::BadRequest("text must not be empty".into()));
        }
        let chunker = Chunker {
            max_tokens: r.chunk_tokens,
            overlap_tokens: r.chunk_overlap_tokens,
            bytes_per_token: app.settings.context.approx_bytes_per_token,
        };
        let chunks = chunker.chunk(&doc.text);
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let bytes = doc.text.len();
        let created = knowledge
            .put(
                &who.tenant,
                &collection,
                &doc.id,
                doc.title.trim(),
                bytes,
                &chunks,
                now_ms,
                r.max_documents_per_collection,
            )
            .await
            .map_err(|e| match e {
                PutError::Full(n) => ApiError::TooLarge(format!("the collection is full ({n} documents)")),
                PutError::Db(e) => ApiError::Archive(e.into()),
            })?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, Json(Stored { id: doc.id, chunks: chunks.len(), bytes, created })).into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    after: Option<String>,
}

#[derive(Debug, Serialize)]
struct DocumentList {
    documents: Vec<DocumentInfo>,
    /// Pass as `after` for the next page; absent after the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// `GET /v1/knowledge/{collection}/documents`.
async fn list(
    State(app): State<App>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    q: Query<ListQuery>,
) -> Response {
    respond(async {
        let (who, knowledge) = open(&app, &headers, &collection).await?;
        let max = app.settings.retrieval.page_max;
        let limit = match q.limit {
            None => max.min(50),
            Some(n) if (1..=max).contains(&n) => n,
            Some(_) => return Err(ApiError::BadRequest(format!("limit must be 1..={max}"))),
        };
        let documents = knowledge
            .list(&who.tenant, &collection, limit, q.after.as_deref())
            .await
            .map_err(|e| ApiError::Archive(e.into()))?;
        let next_after = (documents.len() == limit as usize).then(|| documents.last().map(|d| d.id.clone())).flatten();
        Ok(Json(DocumentList { documents, next_after }).into_response())
    })
    .await
}

/// `DELETE /v1/knowledge/{collection}/documents/{id}`.
async fn remove(
    State(app): State<App>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(async {
        let (who, knowledge) = open(&app, &headers, &collection).await?;
        match knowledge.delete(&who.tenant, &collection, &id).await.map_err(|e| ApiError::Archive(e.into()))? {
            true => Ok(StatusCode::NO_CONTENT.into_response()),
            false => Err(ApiError::NotFound(format!("no document {id}"))),
        }
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
}

#[derive(Debug, Serialize)]
struct SearchHit {
    document: String,
    chunk: u32,
    title: String,
    text: String,
    rank: f32,
}

/// `GET /v1/knowledge/{collection}/search?q=…`: what a turn asking `q` would be given.
async fn search(
    State(app): State<App>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    q: Query<SearchQuery>,
) -> Response {
    respond(async {
        let (who, knowledge) = open(&app, &headers, &collection).await?;
        let r = &app.settings.retrieval;
        let query = crate::retrieval::cut(&q.q, r.max_query_bytes);
        let hits =
            knowledge.search(&who.tenant, &collection, query, r).await.map_err(|e| ApiError::Archive(e.into()))?;
        let hits: Vec<SearchHit> = hits
            .into_iter()
            .map(|h| SearchHit { document: h.document, chunk: h.chunk, title: h.title, text: h.text, rank: h.rank })
            .collect();
        Ok(Json(serde_json::json!({ "hits": hits })).into_response())
    })
    .await
}

async fn respond(run: impl std::future::Future<Output = Result<Response, ApiError>>) -> Response {
    match run.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

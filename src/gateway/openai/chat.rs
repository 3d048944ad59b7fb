//! `POST /v1/chat/completions`: one request, one turn.
//!
//! The turn is sent like protocol v1's `send` (same auth, rate limit, quota, admission), then
//! followed on its session's feed. A streamed response waits for the answer's first text (or the
//! turn's end) before it commits to a status, so a turn that fails before answering gets a real
//! error status (504 for a timeout); later failures arrive as an error chunk. Response headers
//! name the session, the turn, the epoch and the seq of the user's message, so a client that
//! loses the stream resumes it on `GET /v1/sessions/{id}/events`.

use crate::gateway::opens::ClientIp;
use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::{chunk, refused, turn_failed};
use super::request::ChatRequest;
use crate::gateway::authn::session_keys;
use crate::gateway::error::ApiError;
use crate::gateway::follow::{Ending, Piece, TurnFeed};
use crate::gateway::ingress::checked_media;
use crate::gateway::prejoin::new_session_id;
use crate::gateway::{rest, App};
use crate::protocol::Usage;
use crate::settings::ms;

/// Names an existing session: the turn is sent on it, with its history.
pub const SESSION_HEADER: &str = "x-chatfleet-session";
/// Optional idempotency key of the user's message (protocol v1's `client_msg_id`).
pub const CLIENT_MSG_ID_HEADER: &str = "x-chatfleet-client-msg-id";

/// What every chunk repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    max_tokens: Option<u64>,
}

pub(in crate::gateway) async fn completions(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(app, ip, headers, body).await.unwrap_or_else(refused)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers.get(name).map(|v| v.to_str().map_err(|_| ApiError::BadRequest(format!("{name} must be ASCII")))).transpose()
}

async fn run(
    app: App,
    ip: ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = rest::caller(&app, &headers).await?;
    let settings = &app.settings.gateway.ingress;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge(format!("the body exceeds {} bytes", settings.max_body_bytes))
        }
        _ => ApiError::BadRequest("the body could not be read".into()),
    })?;
    let req: ChatRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
    let named = header(&headers, SESSION_HEADER)?;
    let mut ask = req.ask(settings, named.is_some())?;
    // Checked before anything is stored, earlier messages' images included.
    ask.opts.attachments = checked_media(&app, std::mem::take(&mut ask.opts.attachments))?;
    for c in &mut ask.opts.context {
        c.attachments = checked_media(&app, std::mem::take(&mut c.attachments))?;
    }
    let mut session_id = match named {
        Some(id) => id.to_string(),
        None => new_session_id(),
    };
    let mut keys = session_keys(&app, &who, &session_id)?;
    let client_msg_id = match header(&headers, CLIENT_MSG_ID_HEADER)? {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let conn = app.admit("openai", &who, ip)?;
    // A new session can be one whose channel is already joined (taken only once the request is
    // admitted, so refused requests do not drain the pool).
    let mut joined = None;
    if named.is_none() {
        if let Some(p) = app.prejoins.take(&who.tenant) {
            (session_id, keys, joined) = (p.session_id, p.keys, Some(p.sub));
        }
    }
    let cancel = settings.openai_cancel_on_close;
    let message = (client_msg_id.as_str(), ask.text.as_str());
    let (tf, sent) = TurnFeed::send(&app, conn, &who, (keys, joined), message, &ask.opts, cancel).await?;
    let resume = [
        (SESSION_HEADER, session_id.clone()),
        ("x-chatfleet-turn", sent.turn_id.clone()),
        ("x-chatfleet-epoch", sent.epoch.clone()),
        ("x-chatfleet-seq", sent.seq.to_string()),
    ];
    let model = req.model.clone().filter(|m| !m.is_empty());
    let model = model.or_else(|| app.settings.routing.default.first().cloned()).unwrap_or_default();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let meta = Meta { id: format!("chatcmpl-{}", sent.turn_id), created, model, max_tokens: ask.max_tokens };
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let mut response = if req.stream { stream(&app, tf, meta, include_usage).await? } else { whole(tf, meta).await? };
    for (name, value) in resume {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
    Ok(response)
}

fn finish_reason(ending: &Ending, max_tokens: Option<u64>) -> Option<&'static str> {
    match ending {
        Ending::Done(u) if max_tokens.is_some_and(|m| u.completion_tokens >= m) => Some("length"),
        Ending::Done(_) | Ending::Cancelled => Some("stop"),
        Ending::Error { code, .. } if code == "content_filter" => Some("content_filter"),
        Ending::Error { .. } => None,
    }
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// A non-streamed answer: the whole text once the turn ended.
async fn whole(mut tf: TurnFeed, meta: Meta) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: &'a str,
        refusal: Option<()>,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Message<'a>,
        logprobs: Option<()>,
        finish_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Completion<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        system_fingerprint: Option<()>,
        choices: [Choice<'a>; 1],
        usage: UsageOut,
    }
    let mut text = String::new();
    let ending = loop {
        match tf.next().await? {
            Piece::Text(t) => text.push_str(&t),
            Piece::Reset => text.clear(),
            Piece::Tool { .. } => {}
            Piece::End(e) => break e,
        }
    };
    let Some(finish_reason) = finish_reason(&ending, meta.max_tokens) else {
        let Ending::Error { code, message } = ending else { unreachable!("only errors have no finish reason") };
        return Ok(turn_failed(&code, &message));
    };
    let usage = match ending {
        Ending::Done(u) => u,
        _ => Usage::default(),
    };
    let message = Message { role: "assistant", content: &text, refusal: None };
    let body = Completion {
        id: &meta.id,
        object: "chat.completion",
        created: meta.created,
        model: &meta.model,
        system_fingerprint: None,
        choices: [Choice { index: 0, message, logprobs: None, finish_reason }],
        usage: usage.into(),
    };
    Ok(Json(body).into_response())
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: Vec<ChunkChoice<'a>>,
    /// With `stream_options.include_usage`: null on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

/// The streamed answer's state between chunks.
struct Streamer {
    tf: TurnFeed,
    meta: Meta,
    include_usage: bool,
    out: VecDeque<SseEvent>,
    done: bool,
}

impl Streamer {
    fn chunk(&mut self, delta: Delta<'_>, finish_reason: Option<&'static str>) {
        let choices = vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason }];
        self.push_chunk(choices, None);
    }

    fn push_chunk(&mut self, choices: Vec<ChunkChoice<'_>>, usage: Option<UsageOut>) {
        let m = &self.meta;
        let c = Chunk {
            id: &m.id,
            object: "chat.completion.chunk",
            created: m.created,
            model: &m.model,
            system_fingerprint: None,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        self.out.push_back(SseEvent::default().data(crate::protocol::encode(&c)));
    }

    fn fail(&mut self, code: &str, message: &str) {
        self.out.push_back(SseEvent::default().data(chunk(code, message)));
        self.done = true;
    }

    /// Turns one piece of the turn into chunks.
    fn piece(&mut self, p: Piece) {
        match p {
            Piece::Text(t) if !t.is_empty() => self.chunk(Delta { role: None, content: Some(&t) }, None),
            Piece::Text(_) | Piece::Tool { .. } => {}
            // Text already sent cannot be taken back: the stream ends, and the regenerated answer
            // is read from the session feed (the response headers say where).
            Piece::Reset => self.fail(
                "answer_reset",
                "the answer was interrupted and is being generated again; read it from the session feed",
            ),
            Piece::End(ending) => {
                let Some(reason) = finish_reason(&ending, self.meta.max_tokens) else {
                    let Ending::Error { code, message } = ending else { unreachable!("only errors have no reason") };
                    return self.fail(&code, &message);
                };
                self.chunk(Delta { role: None, content: None }, Some(reason));
                if self.include_usage {
                    let usage = match ending {
                        Ending::Done(u) => u,
                        _ => Usage::default(),
                    };
                    self.push_chunk(Vec::new(), Some(usage.into()));
                }
                self.out.push_back(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
        }
    }
}

/// A streamed answer: `chat.completion.chunk` events, then `data: [DONE]`.
async fn stream(app: &App, mut tf: TurnFeed, meta: Meta, include_usage: bool) -> Result<Response, ApiError> {
    // Wait for the first text or the end, so a turn that fails before answering gets a status.
    let first = loop {
        match tf.next().await? {
            Piece::Text(t) if !t.is_empty() => break Piece::Text(t),
            Piece::End(Ending::Error { code, message }) if code != "content_filter" => {
                return Ok(turn_failed(&code, &message));
            }
            Piece::End(e) => break Piece::End(e),
            Piece::Text(_) | Piece::Reset | Piece::Tool { .. } => {}
        }
    };
    let mut s = Streamer { tf, meta, include_usage, out: VecDeque::new(), done: false };
    s.chunk(Delta { role: Some("assistant"), content: Some("") }, None);
    s.piece(first);
    let body = futures::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(ev) = s.out.pop_front() {
                return Some((Ok::<_, Infallible>(ev), s));
            }
            if s.done {
                return None;
            }
            match s.tf.next().await {
                Ok(p) => s.piece(p),
                Err(e) => s.fail(crate::gateway::ws::code_label(e.code()), &e.to_string()),
            }
        }
    });
    let keep_alive = KeepAlive::new().interval(ms(app.settings.gateway.sse_heartbeat_ms)).text("keep-alive");
    Ok(Sse::new(body).keep_alive(keep_alive).into_response())
}

//! The AI SDK's UI message stream (AI SDK 5+, npm `ai`): what `useChat` with
//! `DefaultChatTransport({ api: "<gateway>/v1/aisdk/chat" })` speaks.
//!
//! - `POST /v1/aisdk/chat`: the chat id is the session id; the last message (the user's) is sent
//!   as a turn, its UI message id as `client_msg_id` (a retried POST finds the same turn), and
//!   the session's stored history is the context. Its `file` parts (`url`, `mediaType`,
//!   `filename`) are its attachments, by reference (see `crate::media`). The answer streams as the
//!   `x-vercel-ai-ui-message-stream: v1` SSE protocol: `start`, `text-start`, `text-delta`,
//!   `text-end`, dynamic tool parts for the worker's tool calls, `finish` (or `abort`, `error`),
//!   then `data: [DONE]`.
//! - `GET /v1/aisdk/chat/{id}/stream`: the resume route of `useChat({ resume: true })`. The
//!   running turn's answer from its first character (the transport's `resumeStreamIsReplay`), then
//!   live; 204 when no turn runs.

use super::opens::ClientIp;
use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::authn::session_keys;
use super::error::ApiError;
use super::follow::{Ending, Piece, TurnFeed};
use super::{rest, App};
use crate::keys::is_valid_component;
use crate::payload::TurnOpts;
use crate::settings::ms;

#[derive(Debug, Deserialize)]
struct ChatBody {
    id: String,
    messages: Vec<UiMessage>,
    #[serde(default)]
    trigger: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UiMessage {
    id: String,
    role: String,
    #[serde(default)]
    parts: Vec<UiPart>,
}

#[derive(Debug, Deserialize)]
struct UiPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    /// A `file` part's reference (`url`, `mediaType`, `filename`).
    #[serde(default)]
    url: Option<String>,
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

/// `POST /v1/aisdk/chat`.
pub(super) async fn chat(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let who = rest::caller(&app, &headers).await?;
        let limit = app.settings.gateway.ingress.max_body_bytes;
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!("the body exceeds {limit} bytes")),
            _ => ApiError::BadRequest("the body could not be read".into()),
        })?;
        let body: ChatBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
        if body.trigger.as_deref().is_some_and(|t| t != "submit-message") {
            return Err(ApiError::BadRequest("only trigger `submit-message` is supported".into()));
        }
        let Some(last) = body.messages.last().filter(|m| m.role == "user") else {
            return Err(ApiError::BadRequest("the last message must be the user's".into()));
        };
        if !is_valid_component(&last.id) {
            return Err(ApiError::BadRequest("message ids must be 1-64 characters of [A-Za-z0-9_.-]".into()));
        }
        let mut text = String::new();
        let mut attachments = Vec::new();
        for p in &last.parts {
            match (p.kind.as_str(), &p.text, &p.url, &p.media_type) {
                ("text", Some(t), _, _) => text.push_str(t),
                ("step-start", ..) => {}
                ("file", _, Some(url), Some(media_type)) => attachments.push(
                    crate::media::from_file_part(url, media_type, p.filename.as_deref())
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?,
                ),
                (kind, ..) => {
                    return Err(ApiError::BadRequest(format!("message parts of type `{kind}` are not supported")))
                }
            }
        }
        let opts = TurnOpts { attachments: super::ingress::checked_media(&app, attachments)?, ..Default::default() };
        let keys = session_keys(&app, &who, &body.id)?;
        let conn = app.admit("aisdk", &who, ip)?;
        let cancel = app.settings.gateway.ingress.aisdk_cancel_on_close;
        let (tf, _) = TurnFeed::send(&app, conn, &who, (keys, None), (&last.id, &text), &opts, cancel).await?;
        Ok(stream(&app, tf))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/aisdk/chat/{id}/stream`.
pub(super) async fn resume(
    State(app): State<App>,
    ip: ClientIp,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let who = rest::caller(&app, &headers).await?;
        let keys = session_keys(&app, &who, &id)?;
        let conn = app.admit("aisdk", &who, ip)?;
        let cancel = app.settings.gateway.ingress.aisdk_cancel_on_close;
        let actor = who.actor(&id, app.settings.session.bind_to_user);
        Ok::<_, ApiError>(match TurnFeed::active(&app, conn, keys, &id, actor, cancel).await? {
            Some(tf) => stream(&app, tf),
            None => StatusCode::NO_CONTENT.into_response(),
        })
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The stream's state between parts.
struct UiStream {
    tf: TurnFeed,
    out: VecDeque<SseEvent>,
    done: bool,
    /// The id of the open text part, if one is open.
    text: Option<String>,
    parts: u32,
    /// Tool calls announced and not finished: (tool name, call id), oldest first.
    tools: Vec<(String, String)>,
}

impl UiStream {
    fn part(&mut self, v: serde_json::Value) {
        self.out.push_back(SseEvent::default().data(v.to_string()));
    }

    fn close_text(&mut self) {
        if let Some(id) = self.text.take() {
            self.part(json!({"type": "text-end", "id": id}));
        }
    }

    fn end(&mut self, last: serde_json::Value) {
        self.close_text();
        self.part(last);
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }

    fn piece(&mut self, p: Piece) {
        match p {
            Piece::Text(t) if t.is_empty() => {}
            Piece::Text(t) => {
                let id = match &self.text {
                    Some(id) => id.clone(),
                    None => {
                        self.parts += 1;
                        let id = format!("text-{}", self.parts);
                        self.part(json!({"type": "text-start", "id": id}));
                        self.text = Some(id.clone());
                        id
                    }
                };
                self.part(json!({"type": "text-delta", "id": id, "delta": t}));
            }
            Piece::Tool { name, state } => self.tool(name, &state),
            // Text already sent cannot be taken back; a reload resumes the regenerated answer.
            Piece::Reset => self.end(json!({
                "type": "error",
                "errorText": "the answer was interrupted and is being generated again; reload to see it"
            })),
            Piece::End(Ending::Done(_)) => self.end(json!({"type": "finish", "finishReason": "stop"})),
            Piece::End(Ending::Cancelled) => self.end(json!({"type": "abort", "reason": "cancelled"})),
            Piece::End(Ending::Error { message, .. }) => self.end(json!({"type": "error", "errorText": message})),
        }
    }

    /// A tool call the worker runs, as a dynamic tool part (its arguments are not on the feed).
    fn tool(&mut self, name: String, state: &str) {
        self.close_text();
        if state == "running" {
            self.parts += 1;
            let id = format!("{}-tool-{}", self.tf.turn_id(), self.parts);
            let input = json!({});
            self.part(json!({"type": "tool-input-available", "toolCallId": id, "toolName": name, "input": input, "dynamic": true}));
            self.tools.push((name, id));
            return;
        }
        let Some(i) = self.tools.iter().position(|(n, _)| *n == name) else { return };
        let (_, id) = self.tools.remove(i);
        match state {
            "done" => self.part(json!({"type": "tool-output-available", "toolCallId": id, "output": {"state": state}, "dynamic": true})),
            _ => self.part(json!({"type": "tool-output-error", "toolCallId": id, "errorText": format!("the tool call {state}"), "dynamic": true})),
        }
    }
}

fn stream(app: &App, tf: TurnFeed) -> Response {
    let turn_id = tf.turn_id().to_string();
    let mut s = UiStream { tf, out: VecDeque::new(), done: false, text: None, parts: 0, tools: Vec::new() };
    s.part(json!({"type": "start", "messageId": turn_id}));
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
                Err(e) => s.end(json!({"type": "error", "errorText": e.to_string()})),
            }
        }
    });
    let keep_alive = KeepAlive::new().interval(ms(app.settings.gateway.sse_heartbeat_ms)).text("keep-alive");
    let mut r = Sse::new(body).keep_alive(keep_alive).into_response();
    let h = r.headers_mut();
    h.insert(HeaderName::from_static("x-vercel-ai-ui-message-stream"), HeaderValue::from_static("v1"));
    h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&turn_id) {
        h.insert(HeaderName::from_static("x-chatfleet-turn"), v);
    }
    r
}

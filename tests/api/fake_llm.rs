//! Fake model providers for the upstream tests: real axum HTTP servers on port 0 that speak the
//! exact wire formats (OpenAI Chat Completions SSE, Anthropic Messages events), replaying a
//! script per request: raw byte chunks with delays (so chunk boundaries can fall inside UTF-8
//! characters), error statuses with headers and bodies, and stalls. Each server records the
//! request bodies and headers it got, the order of hits across servers, and every response it
//! was still sending when the client went away.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

/// One piece of a streamed body: bytes, sent after a pause.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub delay_ms: u64,
    pub bytes: Vec<u8>,
}

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 `text/event-stream` with these chunks; `then_stall` keeps the body open afterwards.
    Stream { chunks: Vec<Chunk>, then_stall: bool },
    /// A refusal: status, headers, JSON body.
    Error { status: u16, headers: Vec<(&'static str, String)>, body: String },
    /// Never answers (not even headers).
    Hang,
}

/// Shared record of hits across the servers of one test, in order.
pub type HitLog = Arc<Mutex<Vec<String>>>;

#[derive(Default)]
pub struct Seen {
    pub bodies: Vec<Value>,
    pub headers: Vec<HeaderMap>,
    /// Responses dropped by the server because the client went away mid-body.
    pub disconnects: usize,
    /// Responses that were sent to their end.
    pub completed: usize,
}

struct FakeState {
    name: String,
    script: Mutex<VecDeque<Reply>>,
    fallback: Reply,
    seen: Mutex<Seen>,
    hits: HitLog,
    changed: tokio::sync::Notify,
}

/// A running fake provider.
#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
}

impl Fake {
    /// Starts a server answering with `script` in order, then `fallback` for every later request.
    pub async fn start(name: &str, hits: &HitLog, script: Vec<Reply>, fallback: Reply) -> Fake {
        let state = Arc::new(FakeState {
            name: name.into(),
            script: Mutex::new(script.into()),
            fallback,
            seen: Mutex::new(Seen::default()),
            hits: hits.clone(),
            changed: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(handle))
            .route("/v1/v1/messages", axum::routing::post(handle))
            .route("/v1/messages", axum::routing::post(handle))
            .route("/tool", axum::routing::post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fake { addr, state }
    }

    /// `http://addr/v1` (an OpenAI-style base URL).
    pub fn base_v1(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://addr` (Anthropic-style base URL).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().unwrap())
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.seen(|s| s.bodies.clone())
    }

    /// Waits until `cond` holds for what the server saw, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, cond: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.state.changed.notified();
            if self.seen(&cond) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{} never saw: {what}", self.state.name);
            }
        }
    }
}

/// Marks a response body dropped before its end as a disconnect.
struct Guard {
    state: Arc<FakeState>,
    done: bool,
}

impl Guard {
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut s = self.state.seen.lock().unwrap();
        if self.done {
            s.completed += 1;
        } else {
            s.disconnects += 1;
        }
        drop(s);
        self.state.changed.notify_waiters();
    }
}

async fn handle(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: String) -> Response {
    let reply = state.script.lock().unwrap().pop_front().unwrap_or_else(|| state.fallback.clone());
    {
        let mut s = state.seen.lock().unwrap();
        s.bodies.push(serde_json::from_str(&body).unwrap_or(Value::String(body)));
        s.headers.push(headers);
    }
    state.hits.lock().unwrap().push(state.name.clone());
    state.changed.notify_waiters();
    match reply {
        Reply::Hang => {
            let _guard = Guard { state: state.clone(), done: false };
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Error { status, headers, body } => {
            let mut r = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(Body::from(body)).unwrap()
        }
        Reply::Stream { chunks, then_stall } => {
            let guard = Guard { state: state.clone(), done: false };
            let body =
                futures::stream::unfold((chunks.into_iter(), guard, then_stall), |(mut it, guard, stall)| async move {
                    match it.next() {
                        Some(c) => {
                            tokio::time::sleep(Duration::from_millis(c.delay_ms)).await;
                            Some((Ok::<_, Infallible>(bytes::Bytes::from(c.bytes)), (it, guard, stall)))
                        }
                        None if stall => {
                            std::future::pending::<()>().await;
                            None
                        }
                        None => {
                            guard.finish();
                            None
                        }
                    }
                });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}

/// Whole SSE events as chunks, each after `delay_ms`.
pub fn events(events: &[String], delay_ms: u64) -> Vec<Chunk> {
    events.iter().map(|e| Chunk { delay_ms, bytes: e.clone().into_bytes() }).collect()
}

/// All bytes of `events`, re-cut into chunks of `size` bytes (boundaries fall anywhere,
/// including inside UTF-8 characters and SSE lines).
pub fn rechunk(events: &[String], size: usize, delay_ms: u64) -> Vec<Chunk> {
    let all: Vec<u8> = events.concat().into_bytes();
    all.chunks(size).map(|c| Chunk { delay_ms, bytes: c.to_vec() }).collect()
}

pub fn stream(chunks: Vec<Chunk>) -> Reply {
    Reply::Stream { chunks, then_stall: false }
}

pub fn error(status: u16, headers: Vec<(&'static str, String)>, body: Value) -> Reply {
    Reply::Error { status, headers, body: body.to_string() }
}

// ---- OpenAI Chat Completions ----

fn oa(delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    });
    format!("data: {chunk}\n\n")
}

/// A complete OpenAI stream answering `tokens`, with usage and `[DONE]`.
pub fn openai_text(tokens: &[&str], usage: (u64, u64)) -> Vec<String> {
    let mut out = vec![oa(json!({"role": "assistant", "content": ""}), None)];
    out.extend(tokens.iter().map(|t| oa(json!({"content": t}), None)));
    out.push(oa(json!({}), Some("stop")));
    out.push(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}})
    ));
    out.push("data: [DONE]\n\n".into());
    out
}

/// An OpenAI stream that calls one tool, its arguments split into `pieces`.
pub fn openai_tool_call(id: &str, name: &str, pieces: &[&str]) -> Vec<String> {
    let mut out = vec![oa(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        None,
    )];
    out.extend(pieces.iter().map(|p| oa(json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}), None)));
    out.push(oa(json!({}), Some("tool_calls")));
    out.push("data: [DONE]\n\n".into());
    out
}

/// The first events of an OpenAI stream (role chunk and `tokens`), without an end.
pub fn openai_partial(tokens: &[&str]) -> Vec<String> {
    let mut out = vec![oa(json!({"role": "assistant", "content": ""}), None)];
    out.extend(tokens.iter().map(|t| oa(json!({"content": t}), None)));
    out
}

/// An OpenAI mid-stream error chunk.
pub fn openai_error_event(message: &str) -> String {
    format!("data: {}\n\n", json!({"error": {"message": message, "type": "server_error", "code": null}}))
}

// ---- Anthropic Messages ----

fn an(event: &str, data: Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn an_start(input_tokens: u64) -> Vec<String> {
    vec![an(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-fake", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
    )]
}

/// A complete Anthropic stream answering `tokens` in one text block, with a ping.
pub fn anthropic_text(tokens: &[&str], usage: (u64, u64)) -> Vec<String> {
    let mut out = anthropic_partial(tokens, usage.0);
    out.push(an("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    out.push(an(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": usage.1}}),
    ));
    out.push(an("message_stop", json!({"type": "message_stop"})));
    out
}

/// The start of an Anthropic stream: message_start, a text block and `tokens`, no end.
pub fn anthropic_partial(tokens: &[&str], input_tokens: u64) -> Vec<String> {
    let mut out = an_start(input_tokens);
    out.push(an(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push(an("ping", json!({"type": "ping"})));
    out.extend(tokens.iter().map(|t| {
        an(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        )
    }));
    out
}

/// An Anthropic stream that calls one tool, its input JSON split into `pieces`.
pub fn anthropic_tool_call(id: &str, name: &str, pieces: &[&str]) -> Vec<String> {
    let mut out = an_start(20);
    out.push(an(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
    ));
    out.extend(pieces.iter().map(|p| {
        an("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}))
    }));
    out.push(an("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    out.push(an(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
    ));
    out.push(an("message_stop", json!({"type": "message_stop"})));
    out
}

/// An Anthropic `error` event.
pub fn anthropic_error_event(kind: &str, message: &str) -> String {
    an("error", json!({"type": "error", "error": {"type": kind, "message": message}}))
}

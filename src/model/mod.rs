//! The model interface every upstream implements, and the built-in demo model.
//!
//! A model turns a conversation into a stream of [`ModelEvent`]s. Cancellation is by drop: the
//! worker drops the stream when the user stops or the turn is lost, and an implementation must
//! release its upstream request (close the HTTP stream) when dropped.
//!
//! The real upstreams (OpenAI-compatible, Anthropic), routing and fallback live in
//! [`crate::upstream`]; they implement the same trait, so the worker never knows which it talks to.

pub mod demo;
mod error;

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

pub use error::{ModelError, TimeoutKind};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering an assistant message's [`ToolCall`].
    Tool,
}

/// One message of the conversation handed to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub text: String,
    /// Tool calls an assistant message made (only in the current turn's tool rounds).
    pub tool_calls: Vec<ToolCall>,
    /// For [`Role::Tool`]: the call this result answers.
    pub tool_call_id: Option<String>,
    /// For [`Role::User`]: media the message refers to, by URL (see [`crate::media`]).
    pub attachments: Vec<crate::payload::Attachment>,
}

impl ChatMessage {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self { role, text: text.into(), tool_calls: Vec::new(), tool_call_id: None, attachments: Vec::new() }
    }

    /// A tool result answering `call`.
    pub fn tool_result(call: &ToolCall, text: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            text: text.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call.id.clone()),
            attachments: Vec::new(),
        }
    }
}

/// A tool call the model made, assembled from its streamed fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The upstream's id for the call; the result must name it.
    pub id: String,
    pub name: String,
    /// The argument object as JSON text (as the model wrote it: it may be invalid).
    pub arguments: String,
}

/// A tool the model may call: its name, what it does, and a JSON Schema of its argument object.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// What the router may use to pick an upstream for this turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteHints {
    pub tenant: String,
    /// The session's id: canary splits hash it, so a conversation keeps its variant.
    pub session_id: String,
    /// Flags of the session (`<base>:flags`, set by operators or the application backend).
    pub flags: Vec<String>,
    /// The model the client asked for in its `send`, if any.
    pub model: Option<String>,
    /// Length of the user's new message, in characters.
    pub message_chars: usize,
    /// Most tokens of the answer the client asked for (the upstream's limit still applies).
    pub max_tokens: Option<u64>,
    /// Sampling temperature the client asked for.
    pub temperature: Option<f64>,
    /// The end user the client named, for upstreams that take one (abuse tracking).
    pub user: Option<String>,
}

/// What the model is asked.
#[derive(Debug, Clone, Default)]
pub struct ModelRequest {
    /// The conversation, oldest first: system messages, then history, then the user's new
    /// message, then the current turn's tool rounds. The router packs it into each upstream's
    /// token budget, dropping the oldest history first.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// The tool round limit was reached: the model must answer in text now.
    pub tools_exhausted: bool,
    pub route: RouteHints,
}

impl ModelRequest {
    /// A plain conversation with no tools and no routing hints.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self { messages, ..Default::default() }
    }

    /// The text of the last user message.
    pub fn prompt(&self) -> &str {
        self.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.text.as_str()).unwrap_or_default()
    }
}

/// Token counts of an answer: reported by the upstream, or counted by chatfleet when it reported
/// none (`estimated`, see [`crate::upstream::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The upstream sent no usage: the counts are chatfleet's own (its tokenizer for the
    /// upstream), and a decoder that saw none sets this with zero counts for the client to fill.
    pub estimated: bool,
}

impl ModelUsage {
    /// Adds another round's counts (a turn with tool rounds bills every round).
    pub fn add(&mut self, other: ModelUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        // One estimated round makes the turn's total an estimate.
        self.estimated |= other.estimated;
    }
}

/// One item of a model's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// Which upstream and model are answering; a routed stream sends it before its first output.
    Answering { upstream: String, model: String },
    /// Generated text. Always whole characters: upstream bytes are decoded as UTF-8 across
    /// chunk boundaries before they become text.
    Text(String),
    /// A complete tool call; the worker runs it when the round is done.
    ToolCall(ToolCall),
    /// The answer (or this tool round) is complete.
    Done(ModelUsage),
}

/// The stream a model returns.
pub type ModelStream = BoxStream<'static, Result<ModelEvent, ModelError>>;

/// A model stream counted in [`crate::metrics::WORKER_UPSTREAM_STREAMS_OPEN`] from creation until
/// it is dropped, which is when the upstream request is closed.
pub fn tracked(
    inner: BoxStream<'static, Result<ModelEvent, ModelError>>,
) -> BoxStream<'static, Result<ModelEvent, ModelError>> {
    struct Tracked(BoxStream<'static, Result<ModelEvent, ModelError>>);
    impl futures::Stream for Tracked {
        type Item = Result<ModelEvent, ModelError>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.as_mut().poll_next(cx)
        }
    }
    impl Drop for Tracked {
        fn drop(&mut self) {
            metrics::gauge!(crate::metrics::WORKER_UPSTREAM_STREAMS_OPEN).decrement(1.0);
        }
    }
    metrics::gauge!(crate::metrics::WORKER_UPSTREAM_STREAMS_OPEN).increment(1.0);
    Box::pin(Tracked(inner))
}

/// A language model upstream. Object-safe: the worker holds an `Arc<dyn Model>`.
pub trait Model: Send + Sync + 'static {
    /// Name recorded with each turn.
    fn name(&self) -> &str;

    /// Starts generating. The stream ends after `Done` or an error.
    fn stream(&self, req: ModelRequest) -> ModelStream;

    /// Summarises `req` (already holding the summary instruction) into plain text, within
    /// `timeout`. Used off the streaming path; the router sends it to its summary upstream.
    fn summarize(&self, req: ModelRequest, timeout: Duration) -> BoxFuture<'static, Result<String, ModelError>> {
        collect_text(self.stream(req), timeout)
    }
}

/// Collects a stream's text, failing on an error or when `timeout` passes.
pub fn collect_text(mut s: ModelStream, timeout: Duration) -> BoxFuture<'static, Result<String, ModelError>> {
    Box::pin(async move {
        let collect = async {
            let mut text = String::new();
            while let Some(ev) = s.next().await {
                match ev? {
                    ModelEvent::Text(t) => text.push_str(&t),
                    ModelEvent::Done(_) => break,
                    ModelEvent::Answering { .. } | ModelEvent::ToolCall(_) => {}
                }
            }
            Ok(text)
        };
        tokio::time::timeout(timeout, collect).await.unwrap_or(Err(ModelError::Timeout(TimeoutKind::Total)))
    })
}

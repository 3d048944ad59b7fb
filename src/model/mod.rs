//! The model interface every upstream implements, and the built-in demo model.
//!
//! A model turns a conversation into a stream of [`ModelEvent`]s. Cancellation is by drop: the
//! worker drops the stream when the user stops or the turn is lost, and an implementation must
//! release its upstream request (close the HTTP stream) when dropped.

pub mod demo;

use futures::stream::BoxStream;

use crate::payload::HistoryMessage;

/// What the model is asked.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// The conversation, oldest first; the last message is the user's new one.
    pub messages: Vec<HistoryMessage>,
}

/// Token counts reported by the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One item of a model's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// Generated text. May end inside a UTF-8 character only if it is raw bytes; see
    /// [`crate::worker::coalesce`], which never splits a code point.
    Text(String),
    /// The answer is complete.
    Done(ModelUsage),
}

/// Why a model stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The upstream failed before producing anything; the turn may be retried.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream failed mid-answer.
    #[error("upstream failed: {0}")]
    Failed(String),
}

impl ModelError {
    /// True when trying again may succeed (the upstream never started answering).
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A language model upstream.
pub trait Model: Send + Sync + 'static {
    /// Name recorded with each turn.
    fn name(&self) -> &str;

    /// Starts generating. The stream ends after `Done` or an error.
    fn stream(&self, req: ModelRequest) -> BoxStream<'static, Result<ModelEvent, ModelError>>;
}

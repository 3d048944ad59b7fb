//! OpenAI Chat Completions on the gateway: `POST /v1/chat/completions` (streamed or not) and
//! `GET /v1/models`, in OpenAI's wire format, so an app built on an OpenAI SDK moves to chatfleet
//! by changing its base URL and key (docs/protocol.md, "OpenAI Chat Completions").
//!
//! - [`request`]: the request body, and what of it becomes the turn;
//! - [`chat`]: the handler and both response shapes;
//! - [`error`]: OpenAI's error object;
//! - [`models`]: the model list.

pub(super) mod chat;
mod error;
pub(super) mod models;
mod request;

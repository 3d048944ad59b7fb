//! Ingresses for protocols that clients already speak: OpenAI Chat Completions
//! ([`super::openai`]) and the AI SDK's UI message stream ([`super::aisdk`]). Each request is a
//! turn sent through the same commands (auth, rate limits, quotas, admission) as protocol v1, and
//! its answer is read through the same feed ([`super::follow`]).

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::{aisdk, openai, App};
use crate::settings::SettingsError;

/// `[gateway.ingress]`.
#[derive(Debug, Clone, Deserialize)]
pub struct IngressSettings {
    /// Closing an OpenAI Chat Completions response before it ended stops its turn (a closed tab
    /// does not burn GPU). Off: the turn runs on, and can be read from its session feed.
    pub openai_cancel_on_close: bool,
    /// The same for the AI SDK's chat stream. Off by default: `useChat({ resume: true })` reloads
    /// the page mid-answer and expects the answer to go on.
    pub aisdk_cancel_on_close: bool,
    /// Largest request body of these routes (they carry a conversation, not one message).
    pub max_body_bytes: usize,
    /// Most messages a stateless OpenAI request may carry as its context.
    pub max_context_messages: usize,
    /// Most bytes of text of those messages (stored with the turn).
    pub max_context_bytes: usize,
    /// New sessions whose channels each tenant keeps joined ahead for stateless OpenAI requests,
    /// which then skip the SSUBSCRIBE round trip before their turn is sent (0: off).
    pub prejoined_per_tenant: usize,
    /// Most tenants with such a pool; the least recently used one's is dropped for a new one.
    pub prejoined_tenants: usize,
}

impl IngressSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &'static str| Err(SettingsError::Invalid { key, reason: "must be at least 1".into() });
        if self.max_body_bytes == 0 {
            return bad("gateway.ingress.max_body_bytes");
        }
        if self.max_context_messages == 0 {
            return bad("gateway.ingress.max_context_messages");
        }
        if self.max_context_bytes == 0 {
            return bad("gateway.ingress.max_context_bytes");
        }
        Ok(())
    }
}

/// A message's attachments checked against `[media]` and normalised. Any refusal is a 400 (as
/// OpenAI's API answers an image it will not take), counted like a v1 send's.
pub(super) fn checked_media(
    app: &App,
    attachments: Vec<crate::payload::Attachment>,
) -> Result<Vec<crate::payload::Attachment>, super::error::ApiError> {
    app.settings.media.check(&attachments).map_err(|e| {
        metrics::counter!(crate::metrics::GATEWAY_ATTACHMENTS, "outcome" => "refused")
            .increment(attachments.len() as u64);
        super::error::ApiError::BadRequest(e.to_string())
    })
}

/// The routes of both ingresses, with their own body limit.
pub(super) fn router(s: &IngressSettings) -> Router<App> {
    let limit = DefaultBodyLimit::max(s.max_body_bytes);
    Router::new()
        .route("/v1/chat/completions", post(openai::chat::completions).layer(limit))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/aisdk/chat", post(aisdk::chat).layer(limit))
        .route("/v1/aisdk/chat/{id}/stream", get(aisdk::resume))
}

//! The request of a turn's first round: the conversation, its canary variant, and retrieval.
//!
//! Stages, in order, each with its TTFT metric: the session load (start_turn, context, the
//! conversation built: `chatfleet_turn_session_load_seconds`), then retrieval when a
//! `[[retrieval.rules]]` rule matches (`chatfleet_turn_retrieval_seconds`). The canary variant
//! is decided here from a fixed hash of the session id (the router decides the same for the
//! chain), and the variant's system prompt replaces the context's.
//!
//! What the turn records about how its prompt was built rides on the audit's `template`:
//! the template version (the canary's, or `<version>+<canary>`), then `;retrieval=<outcome>`
//! when retrieval ran (`packed`, `empty`, `timeout`, `failed`), so an answer given without its
//! reference material is marked as such; then `;moderation=unavailable` when a moderation check
//! failed and `guard.moderation_fail_open` let the turn go on (added by the stream, which sees
//! the checks: see `crate::guard::UNCHECKED_MARK`).

use std::borrow::Cow;

use bytes::Bytes;

use super::stream::Turn;
use super::tenant_of;
use crate::metrics as m;
use crate::model::{ModelRequest, RouteHints};
use crate::payload;
use crate::retrieval::pack::{self, Cited};
use crate::retrieval::Outcome;
use crate::upstream::summary;

/// The first round's request and what the turn records about it.
pub(super) struct Prepared {
    pub request: ModelRequest,
    /// The audit's template field (see the module doc).
    pub template: String,
    /// The canary variant's name, or `control`: the `variant` metric label.
    pub variant: String,
    /// The chunks packed into the prompt.
    pub citations: Vec<Cited>,
}

/// Builds the first round's request, running retrieval when a rule asks for it.
pub(super) async fn prepare(
    t: &Turn<'_>,
    history: &[payload::HistoryMessage],
    opts: &Bytes,
    load_started: tokio::time::Instant,
) -> Prepared {
    let s = &t.shared.settings;
    let opts = payload::decode_turn_opts(opts).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring undecodable turn options");
        payload::TurnOpts::default()
    });
    let message_chars = history.last().map(|m| m.text.chars().count()).unwrap_or(0);
    let tenant = tenant_of(&t.d.base).to_string();
    let session_id = t.d.base.rsplit(':').next().unwrap_or_default().to_string();
    let route = RouteHints {
        tenant,
        session_id,
        flags: t.ctx.flags.clone(),
        model: opts.model,
        message_chars,
        max_tokens: opts.max_tokens,
        temperature: opts.temperature,
        user: opts.user,
    };
    let chosen = s.routing.route(&route);
    let (context, mut template) = match chosen.variant {
        Some(c) => {
            let mut ctx = s.context.clone();
            if let Some(p) = &c.system_prompt {
                ctx.system_prompt = p.clone();
            }
            let template =
                c.template_version.clone().unwrap_or_else(|| format!("{}+{}", s.context.template_version, c.name));
            (Cow::Owned(ctx), template)
        }
        None => (Cow::Borrowed(&s.context), s.context.template_version.clone()),
    };
    let variant = chosen.label().to_string();
    let messages = summary::conversation(&context, history, t.ctx.summary.as_ref());
    let messages = summary::with_context(messages, &opts.context);
    metrics::histogram!(m::TURN_SESSION_LOAD_SECONDS).record(load_started.elapsed().as_secs_f64());
    let mut request = ModelRequest { messages, tools: t.shared.tools.specs(), tools_exhausted: false, route };
    let mut citations = Vec::new();
    let collection = s.retrieval.collection_for(&request.route);
    if let (Some(r), Some(collection)) = (&t.shared.retrieval, collection) {
        let outcome = r.retrieve(&request.route.tenant, collection, request.prompt()).await;
        template.push_str(";retrieval=");
        template.push_str(outcome.label());
        if let Outcome::Packed(reference) = outcome {
            request.messages = pack::insert(std::mem::take(&mut request.messages), reference.message);
            citations = reference.citations;
        }
    }
    Prepared { request, template, variant, citations }
}

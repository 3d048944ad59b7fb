//! The router: picks an upstream chain per turn by the `[routing]` rules (and their canary
//! splits, [`super::canary`]), packs the conversation
//! into each upstream's budget, and falls back along the chain while an upstream fails before
//! its first token. It is the [`Model`] the worker talks to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use super::client::Upstream;
use super::pack::pack;
use super::settings::RoutingSettings;
use crate::metrics as m;
use crate::model::{collect_text, Model, ModelError, ModelEvent, ModelRequest, ModelStream, RouteHints};
use crate::settings::Settings;

/// Routes turns to named upstreams.
pub struct Router {
    upstreams: BTreeMap<String, Arc<Upstream>>,
    routing: RoutingSettings,
    summary_upstream: String,
}

impl Router {
    /// Builds every declared upstream (reading API keys named by `api_key_env` now).
    pub fn new(s: &Settings) -> Self {
        let mut upstreams = BTreeMap::new();
        for (name, u) in &s.upstreams {
            upstreams.insert(name.clone(), Arc::new(Upstream::new(name, u, &s.context, &s.model.demo)));
        }
        let summary_upstream = match s.context.summary_upstream.as_str() {
            "" => s.routing.default.first().cloned().unwrap_or_default(),
            name => name.to_string(),
        };
        Self { upstreams, routing: s.routing.clone(), summary_upstream }
    }

    /// The chain of upstream names for a turn: the first rule that matches (or its canary
    /// variant's chain, for the sessions on the variant's side), else the default.
    pub fn chain(&self, h: &RouteHints) -> &[String] {
        self.routing.route(h).chain
    }

    fn upstreams_for(&self, h: &RouteHints) -> Vec<Arc<Upstream>> {
        self.chain(h).iter().filter_map(|n| self.upstreams.get(n).cloned()).collect()
    }
}

/// Starts `req` on `u`: packed into its budget, and with the first item already read, so a
/// failure before the first token is known before anything reaches the worker.
async fn first_item(u: &Upstream, req: &ModelRequest) -> Result<(ModelEvent, ModelStream), ModelError> {
    // Attachments this upstream cannot take by URL become text first, so they are counted.
    let messages = match req.messages.iter().any(crate::media::has_media) {
        true => std::borrow::Cow::Owned(crate::media::for_upstream(&req.messages, &u.settings.media)),
        false => std::borrow::Cow::Borrowed(&req.messages),
    };
    let packed = pack(&messages, &req.tools, &u.counter, u.settings.prompt_budget())?;
    metrics::histogram!(m::CONTEXT_PROMPT_TOKENS, "upstream" => u.name.clone()).record(packed.tokens as f64);
    if packed.dropped > 0 {
        metrics::counter!(m::CONTEXT_DROPPED_MESSAGES, "upstream" => u.name.clone()).increment(packed.dropped as u64);
    }
    let mut s = u.stream(&ModelRequest { messages: packed.messages, ..req.clone() });
    match s.next().await {
        Some(Ok(ev)) => Ok((ev, s)),
        Some(Err(e)) => Err(e),
        None => Err(ModelError::Unavailable(format!("upstream `{}` ended without answering", u.name))),
    }
}

impl Model for Router {
    fn name(&self) -> &str {
        "router"
    }

    fn stream(&self, req: ModelRequest) -> ModelStream {
        let chain = self.upstreams_for(&req.route);
        let run = async move {
            let mut last = ModelError::Unavailable("no upstream is configured for this turn".into());
            for (i, u) in chain.iter().enumerate() {
                match first_item(u, &req).await {
                    Ok((first, rest)) => {
                        metrics::counter!(m::UPSTREAM_REQUESTS, "upstream" => u.name.clone(), "outcome" => "answered")
                            .increment(1);
                        let answering =
                            ModelEvent::Answering { upstream: u.name.clone(), model: u.settings.model.clone() };
                        let head = futures::stream::iter([Ok(answering), Ok(first)]);
                        return Ok(head.chain(rest).boxed());
                    }
                    Err(e) => {
                        metrics::counter!(m::UPSTREAM_REQUESTS, "upstream" => u.name.clone(), "outcome" => e.code())
                            .increment(1);
                        if !e.falls_back() {
                            return Err(e);
                        }
                        if let Some(next) = chain.get(i + 1) {
                            tracing::info!(from = %u.name, to = %next.name, error = %e, "falling back");
                            metrics::counter!(m::UPSTREAM_FALLBACKS, "upstream" => u.name.clone()).increment(1);
                        }
                        last = e;
                    }
                }
            }
            Err(last)
        };
        futures::stream::once(run).try_flatten().boxed()
    }

    fn summarize(&self, req: ModelRequest, timeout: Duration) -> BoxFuture<'static, Result<String, ModelError>> {
        let Some(u) = self.upstreams.get(&self.summary_upstream).cloned() else {
            return Box::pin(async { Err(ModelError::Unavailable("no summary upstream".into())) });
        };
        Box::pin(async move {
            let packed = pack(&req.messages, &[], &u.counter, u.settings.prompt_budget())?;
            collect_text(u.stream(&ModelRequest { messages: packed.messages, ..req }), timeout).await
        })
    }
}

//! One named upstream: its HTTP client, key, concurrency slots and timeouts, in front of a
//! provider's wire format ([`super::openai`], [`super::anthropic`]) or the demo model.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::http::{self, Limits};
use super::settings::{ContextSettings, UpstreamKind, UpstreamSettings};
use super::tokens::Counter;
use super::{anthropic, openai};
use crate::metrics as m;
use crate::model::demo::DemoModel;
use crate::model::demo::DemoModelSettings;
use crate::model::{Model, ModelError, ModelRequest, ModelStream, TimeoutKind};
use crate::settings_base::ms;

/// A configured upstream.
pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    /// Shared with the streams, which count an answer's tokens when the upstream reports none.
    pub counter: Arc<Counter>,
    inner: Inner,
}

enum Inner {
    Http {
        client: reqwest::Client,
        key: Option<SecretString>,
        slots: Arc<Semaphore>,
    },
    Demo(DemoModel),
    /// Could not be set up (settings validation normally stops the process first): every
    /// request is refused, so a fallback chain moves on.
    Unusable(String),
}

/// A held concurrency slot; counts as in flight until dropped with the stream.
struct Slot {
    _permit: OwnedSemaphorePermit,
    name: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(m::UPSTREAM_IN_FLIGHT, "upstream" => self.name.clone()).decrement(1.0);
    }
}

impl Upstream {
    pub fn new(name: &str, u: &UpstreamSettings, ctx: &ContextSettings, demo: &DemoModelSettings) -> Self {
        let counter = Arc::new(Counter::for_upstream(u, ctx));
        let inner = match u.kind {
            UpstreamKind::Demo => Inner::Demo(DemoModel::new(demo.clone())),
            UpstreamKind::Openai | UpstreamKind::Anthropic => Self::http(name, u),
        };
        Self { name: name.to_string(), settings: u.clone(), counter, inner }
    }

    fn http(name: &str, u: &UpstreamSettings) -> Inner {
        let key = match (&u.api_key, &u.api_key_env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(var)) => match super::settings::key_from_env(var) {
                Some(k) => Some(k),
                None => return Inner::Unusable(format!("upstream `{name}`: {var} (api_key_env) is not set")),
            },
            (None, None) => None,
        };
        match reqwest::Client::builder().connect_timeout(ms(u.connect_timeout_ms)).build() {
            Ok(client) => Inner::Http { client, key, slots: Arc::new(Semaphore::new(u.max_concurrent)) },
            Err(e) => Inner::Unusable(format!("upstream `{name}`: cannot build its HTTP client: {e}")),
        }
    }

    /// Streams the answer to `req`, which must already fit this upstream's budget.
    pub fn stream(&self, req: &ModelRequest) -> ModelStream {
        let (client, key, slots) = match &self.inner {
            Inner::Demo(d) => return d.stream(req.clone()),
            Inner::Unusable(why) => {
                tracing::error!(upstream = %self.name, "{why}");
                let e = ModelError::Rejected(format!("upstream `{}` is not configured", self.name));
                return futures::stream::once(async move { Err(e) }).boxed();
            }
            Inner::Http { client, key, slots } => (client, key, slots.clone()),
        };
        let u = &self.settings;
        let base = u.base_url.trim_end_matches('/');
        let builder = match u.kind {
            UpstreamKind::Anthropic => {
                let mut b = client
                    .post(format!("{base}/v1/messages"))
                    .header("anthropic-version", &u.anthropic_version)
                    .json(&anthropic::body(u, req));
                if let Some(k) = key {
                    b = b.header("x-api-key", sensitive(k));
                }
                b
            }
            _ => {
                let mut b = client.post(format!("{base}/chat/completions")).json(&openai::body(u, req));
                if let Some(k) = key {
                    b = b.header(
                        "authorization",
                        sensitive(&SecretString::from(format!("Bearer {}", k.expose_secret()))),
                    );
                }
                b
            }
        }
        .header("accept", "text/event-stream");
        let limits = Limits {
            first_token: ms(u.first_token_timeout_ms),
            idle: ms(u.idle_timeout_ms),
            total: ms(u.total_timeout_ms),
            max_error_body_bytes: u.max_error_body_bytes,
        };
        let (name, kind, queue) = (self.name.clone(), u.kind, ms(u.queue_timeout_ms));
        let prompt = super::usage::prompt_tokens(&self.counter, req);
        let start = async move {
            let slot = acquire(&name, slots, queue).await?;
            let begun = Instant::now();
            let deadline = begun + limits.first_token.min(limits.total);
            let resp = http::send(&name, builder, deadline, &limits).await?;
            Ok::<_, ModelError>(match kind {
                UpstreamKind::Anthropic => http::drive(
                    &name,
                    resp,
                    anthropic::AnthropicDecoder::default(),
                    limits,
                    begun,
                    Some(Box::new(slot)),
                ),
                _ => http::drive(&name, resp, openai::OpenAiDecoder::default(), limits, begun, Some(Box::new(slot))),
            })
        };
        let stream = futures::stream::once(start).try_flatten().boxed();
        super::usage::estimate_missing(&self.name, self.counter.clone(), prompt, stream)
    }
}

/// A header value that `Debug` and logs show as `Sensitive`.
fn sensitive(secret: &SecretString) -> reqwest::header::HeaderValue {
    let mut v = reqwest::header::HeaderValue::from_str(secret.expose_secret())
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// Waits for a concurrency slot, at most `queue`; the wait is the upstream's queue time.
async fn acquire(name: &str, slots: Arc<Semaphore>, queue: Duration) -> Result<Slot, ModelError> {
    let waited = Instant::now();
    metrics::gauge!(m::UPSTREAM_QUEUED, "upstream" => name.to_string()).increment(1.0);
    let permit = tokio::time::timeout(queue, slots.acquire_owned()).await;
    metrics::gauge!(m::UPSTREAM_QUEUED, "upstream" => name.to_string()).decrement(1.0);
    metrics::histogram!(m::UPSTREAM_QUEUE_WAIT_SECONDS, "upstream" => name.to_string())
        .record(waited.elapsed().as_secs_f64());
    match permit {
        Ok(Ok(p)) => {
            metrics::gauge!(m::UPSTREAM_IN_FLIGHT, "upstream" => name.to_string()).increment(1.0);
            Ok(Slot { _permit: p, name: name.to_string() })
        }
        Ok(Err(_)) => Err(ModelError::Unavailable(format!("upstream `{name}` is shut"))),
        Err(_) => Err(ModelError::Timeout(TimeoutKind::Queue)),
    }
}

//! The HTTP side shared by the providers: sending a streaming request, mapping a refused one to a
//! [`ModelError`] (status, `retry-after`, error body), and driving the SSE body through a
//! provider's [`Decoder`] under the upstream's timeouts.
//!
//! SSE framing (and UTF-8 decoding across chunk boundaries) is `eventsource-stream`'s job; a
//! decoder only sees whole events. Dropping the returned stream drops the response body, which
//! closes the upstream connection: that is how a stop reaches the upstream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use tokio::time::{timeout_at, Instant};

use crate::metrics as m;
use crate::model::{ModelError, ModelEvent, ModelStream, TimeoutKind};

/// What a decoder made of one SSE event.
#[derive(Debug, Default)]
pub struct Step {
    /// Events for the worker, in order.
    pub out: Vec<ModelEvent>,
    /// The event carried generated output (text or a tool-call fragment): it resets the silence
    /// timer and counts as the first token. Keep-alives and role-only chunks do not.
    pub progress: bool,
    /// The upstream said the answer is complete; nothing more is read.
    pub done: bool,
}

/// A provider's parser of its streaming events.
pub trait Decoder: Send + 'static {
    /// Handles one event. An `Err` is an error the upstream reported in the stream (or an event
    /// that cannot be parsed); its text goes to the log, not to the client.
    fn event(&mut self, ev: &Event) -> Result<Step, String>;

    /// The body ended without a completion marker. Return the closing events when the answer is
    /// nevertheless complete (a server that omits `[DONE]`), else `None` (a truncated answer).
    fn end(&mut self) -> Option<Vec<ModelEvent>>;
}

/// Timeouts of one upstream request, as deadlines and windows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
    pub max_error_body_bytes: usize,
}

/// Sends `req` and returns the response once its headers arrived with a success status.
pub async fn send(
    name: &str,
    req: reqwest::RequestBuilder,
    deadline: Instant,
    limits: &Limits,
) -> Result<reqwest::Response, ModelError> {
    let resp = match timeout_at(deadline, req.send()).await {
        Err(_) => return Err(ModelError::Timeout(TimeoutKind::FirstToken)),
        Ok(Err(e)) if e.is_connect() && is_timeout(&e) => return Err(ModelError::Timeout(TimeoutKind::Connect)),
        Ok(Err(e)) => {
            // reqwest errors name the URL, never headers, so the key cannot leak here.
            tracing::warn!(upstream = name, error = %e, "upstream request failed");
            return Err(ModelError::Unavailable(format!("cannot reach upstream `{name}`")));
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let body = read_capped(resp, limits.max_error_body_bytes, deadline).await;
    tracing::warn!(upstream = name, %status, body = %error_detail(&body), "upstream refused the request");
    let message = format!("upstream `{name}` answered {}", status.as_u16());
    Err(match status {
        StatusCode::TOO_MANY_REQUESTS => ModelError::RateLimited { message, retry_after },
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::CONFLICT => {
            ModelError::Unavailable(message)
        }
        _ => ModelError::Rejected(message),
    })
}

fn is_timeout(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("timed out") || s.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        source = s.source();
    }
    e.is_timeout()
}

/// `retry-after-ms` (OpenAI), else `retry-after` in seconds or as an HTTP date.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    let v = text("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.max(0.0)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// At most `cap` bytes of a body, as text, within `deadline`.
async fn read_capped(resp: reqwest::Response, cap: usize, deadline: Instant) -> String {
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while body.len() < cap {
        match timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(c))) => body.extend_from_slice(&c[..c.len().min(cap - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of an OpenAI (`{"error":{"message"}}`) or Anthropic (`{"error":{"message"}}`,
/// `type: error`) error body, else the body itself.
pub fn error_detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(e.get("message").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| e.to_string()))
        })
        .unwrap_or_else(|| body.chars().take(500).collect())
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>> + Send>>;

struct Drive<D> {
    name: String,
    events: Events,
    decoder: D,
    queue: VecDeque<ModelEvent>,
    started: bool,
    finished: bool,
    begun: Instant,
    last_progress: Instant,
    limits: Limits,
    /// Holds the upstream's concurrency slot for as long as the stream lives.
    _slot: Option<Box<dyn Send>>,
}

/// Streams the body of a successful response through `decoder` under `limits`, measured from
/// `begun` (when the request was sent).
pub fn drive<D: Decoder>(
    name: &str,
    resp: reqwest::Response,
    decoder: D,
    limits: Limits,
    begun: Instant,
    slot: Option<Box<dyn Send>>,
) -> ModelStream {
    let state = Drive {
        name: name.to_string(),
        events: Box::pin(resp.bytes_stream().eventsource()),
        decoder,
        queue: VecDeque::new(),
        started: false,
        finished: false,
        begun,
        last_progress: begun,
        limits,
        _slot: slot,
    };
    futures::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    })
    .boxed()
}

impl<D: Decoder> Drive<D> {
    fn fail(&mut self, detail: String) -> Result<ModelEvent, ModelError> {
        self.finished = true;
        tracing::warn!(upstream = %self.name, error = %detail, started = self.started, "upstream stream failed");
        let message = format!("upstream `{}` reported an error", self.name);
        Err(if self.started { ModelError::Failed(message) } else { ModelError::Unavailable(message) })
    }

    async fn next(&mut self) -> Option<Result<ModelEvent, ModelError>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(e));
            }
            if self.finished {
                return None;
            }
            let total = self.begun + self.limits.total;
            let window =
                if self.started { self.last_progress + self.limits.idle } else { self.begun + self.limits.first_token };
            let deadline = window.min(total);
            let ev = match timeout_at(deadline, self.events.next()).await {
                Err(_) => {
                    self.finished = true;
                    let kind = match (deadline == total, self.started) {
                        (true, _) => TimeoutKind::Total,
                        (false, true) => TimeoutKind::Idle,
                        (false, false) => TimeoutKind::FirstToken,
                    };
                    metrics::counter!(m::UPSTREAM_TIMEOUTS, "upstream" => self.name.clone(), "kind" => kind.code())
                        .increment(1);
                    return Some(Err(ModelError::Timeout(kind)));
                }
                Ok(None) => match self.decoder.end() {
                    Some(out) => {
                        self.finished = true;
                        self.queue.extend(out);
                        continue;
                    }
                    None => return Some(self.fail("the stream ended before the answer was complete".into())),
                },
                Ok(Some(Err(e))) => return Some(self.fail(format!("reading the stream: {e}"))),
                Ok(Some(Ok(ev))) => ev,
            };
            match self.decoder.event(&ev) {
                Ok(step) => {
                    if step.progress {
                        if !self.started {
                            metrics::histogram!(m::UPSTREAM_TTFT_SECONDS, "upstream" => self.name.clone())
                                .record(self.begun.elapsed().as_secs_f64());
                        }
                        self.started = true;
                        self.last_progress = Instant::now();
                    }
                    self.queue.extend(step.out);
                    self.finished = step.done;
                }
                Err(detail) => return Some(self.fail(detail)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert("retry-after", HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(28) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn error_bodies_of_both_providers_give_their_message() {
        assert_eq!(error_detail(r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#), "bad key");
        assert_eq!(
            error_detail(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            "Overloaded"
        );
        assert_eq!(error_detail("plain"), "plain");
    }
}

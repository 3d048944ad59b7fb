//! Running one turn: start (fenced attempt), stream the model, coalesce, emit, finish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::coalesce::Coalescer;
use super::{Delivery, Shared, TurnSignals};
use crate::metrics as m;
use crate::model::{ModelEvent, ModelRequest, ModelUsage};
use crate::settings::ms;
use crate::store::{FinishArgs, StartOutcome, StoreError, WriteOutcome};

/// How a turn's streaming loop ended.
enum Ending {
    Done(ModelUsage),
    Cancelled,
    Failed {
        code: &'static str,
        message: String,
        /// Also record the turn in the dead-letter stream (the upstream never answered).
        dead_letter: bool,
    },
    /// This attempt lost the turn (reclaimed): write nothing more.
    Fenced,
    /// Drain deadline: hand the turn to another worker.
    Released,
    /// Redis failed under us: leave the turn to the lease, another worker will retake it.
    Abandoned(StoreError),
}

pub(super) async fn run(shared: &Arc<Shared>, d: Delivery) {
    let span = tracing::info_span!("turn", turn_id = %d.turn_id, partition = d.partition);
    crate::trace::adopt(&span, d.traceparent.as_deref());
    run_inner(shared, d).instrument(span).await
}

async fn run_inner(shared: &Arc<Shared>, d: Delivery) {
    let store = &shared.store;
    let stream_key = store.keys().stream(d.partition);
    let start = store.start_turn(&d.base, &stream_key, &d.turn_id, &d.entry_id, &shared.id).await;
    let (attempt, history, created_ms, started_ms) = match start {
        Ok(StartOutcome::Run { attempt, history, created_ms, started_ms, .. }) => {
            (attempt, history, created_ms, started_ms)
        }
        Ok(other) => {
            tracing::debug!(?other, "turn not started");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "start_turn failed; the sweep will retry the turn");
            return;
        }
    };
    let queue_wait = Duration::from_millis(started_ms.saturating_sub(created_ms));
    metrics::histogram!(m::TURN_QUEUE_WAIT_SECONDS).record(queue_wait.as_secs_f64());
    let signals = TurnSignals { cancel: CancellationToken::new(), cancel_at: Arc::new(Mutex::new(None)) };
    if let Ok(mut map) = shared.running.lock() {
        map.insert(d.turn_id.clone(), signals.clone());
    }
    metrics::gauge!(m::WORKER_ACTIVE_TURNS).increment(1.0);
    let began = Instant::now();
    let mut stats = Stats { deltas: 0, queue_wait };
    let ending = stream_turn(shared, &d, attempt, history, &signals, &mut stats).await;
    metrics::gauge!(m::WORKER_ACTIVE_TURNS).decrement(1.0);
    if let Ok(mut map) = shared.running.lock() {
        map.remove(&d.turn_id);
    }
    let outcome = finish(shared, &d, attempt, ending).await;
    metrics::counter!(m::TURNS, "outcome" => outcome).increment(1);
    metrics::histogram!(m::TURN_DURATION_SECONDS, "outcome" => outcome).record(began.elapsed().as_secs_f64());
    metrics::histogram!(m::TURN_DELTAS).record(stats.deltas as f64);
}

struct Stats {
    deltas: u64,
    queue_wait: Duration,
}

async fn stream_turn(
    shared: &Arc<Shared>,
    d: &Delivery,
    attempt: u32,
    history: Vec<crate::payload::HistoryMessage>,
    signals: &TurnSignals,
    stats: &mut Stats,
) -> Ending {
    let w = &shared.settings.worker;
    let store = &shared.store;
    let began = Instant::now();
    let turn_deadline = began + ms(w.turn_timeout_ms);
    let heartbeat = ms(w.heartbeat_ms);
    let mut next_heartbeat = began + heartbeat;
    let request = ModelRequest { messages: history };
    let abandon_ms = shared.settings.abandon_ms(tenant_of(&d.base));
    // `None` while waiting to retry an upstream that failed before its first token.
    let mut model = Some(shared.model.stream(request.clone()));
    let mut retry_at: Option<Instant> = None;
    let mut retries = 0;
    let mut first_token = false;
    let mut co = Coalescer::new(ms(w.coalesce_ms), w.max_delta_bytes);
    let mut usage = None;
    let mut model_open = true;

    loop {
        let due = co.deadline();
        tokio::select! {
            biased;
            _ = signals.cancel.cancelled() => return cancelled(signals, model),
            _ = shared.release.cancelled() => return Ending::Released,
            _ = sleep_until(due.unwrap_or(turn_deadline)), if due.is_some() => {}
            _ = sleep_until(retry_at.unwrap_or(turn_deadline)), if retry_at.is_some() => {
                retry_at = None;
                model = Some(shared.model.stream(request.clone()));
            }
            ev = next_event(&mut model), if model.is_some() && model_open => match ev {
                Some(Ok(ModelEvent::Text(t))) => {
                    if !first_token {
                        first_token = true;
                        metrics::histogram!(m::TURN_MODEL_TTFT_SECONDS).record(began.elapsed().as_secs_f64());
                    }
                    co.push_str(&t, Instant::now());
                }
                Some(Ok(ModelEvent::Done(u))) => { usage = Some(u); model_open = false; }
                Some(Err(e)) => {
                    model = None; // dropping the stream closes the upstream request
                    if first_token {
                        return Ending::Failed { code: "upstream_failed", message: e.to_string(), dead_letter: false };
                    }
                    if !e.retryable() || retries >= w.upstream_retries {
                        return Ending::Failed { code: "upstream_unavailable", message: e.to_string(), dead_letter: true };
                    }
                    retries += 1;
                    metrics::counter!(m::WORKER_UPSTREAM_RETRIES).increment(1);
                    let backoff = full_jitter(w.upstream_retry_base_ms, w.upstream_retry_max_ms, retries);
                    tracing::info!(retry = retries, backoff_ms = backoff.as_millis() as u64, error = %e, "retrying upstream");
                    retry_at = Some(Instant::now() + backoff);
                }
                None => model_open = false,
            },
            _ = sleep_until(next_heartbeat) => {
                next_heartbeat = Instant::now() + heartbeat;
                match store.heartbeat(&d.base, &d.turn_id, attempt, abandon_ms).await {
                    Ok(None) => return Ending::Fenced,
                    Ok(Some(true)) => {
                        signals.mark_cancel_requested();
                        return cancelled(signals, model);
                    }
                    Ok(Some(false)) => {}
                    Err(e) => return Ending::Abandoned(e),
                }
            }
            _ = sleep_until(turn_deadline) => {
                return Ending::Failed { code: "turn_timeout", message: "the answer took too long".into(), dead_letter: false };
            }
        }
        // Flush what is due; at the end of the stream, flush everything.
        let now = Instant::now();
        while co.ready(now) || (!model_open && co.deadline().is_some()) {
            let Some(text) = (if model_open { co.take(now) } else { co.finish() }) else { break };
            match store.emit(&d.base, &d.turn_id, attempt, &text, abandon_ms).await {
                Ok(WriteOutcome::Written { cancel, .. }) => {
                    stats.deltas += 1;
                    next_heartbeat = Instant::now() + heartbeat;
                    if stats.deltas == 1 {
                        metrics::histogram!(m::TURN_TTFT_SECONDS)
                            .record((stats.queue_wait + began.elapsed()).as_secs_f64());
                    }
                    if cancel {
                        signals.mark_cancel_requested();
                        return cancelled(signals, model);
                    }
                }
                Ok(WriteOutcome::Fenced) => return Ending::Fenced,
                Err(e) => return Ending::Abandoned(e),
            }
        }
        if !model_open && co.deadline().is_none() {
            return Ending::Done(usage.unwrap_or_default());
        }
    }
}

/// The tenant named in a session base (`<prefix>:{pNN}:s:<tenant>:<sid>`).
fn tenant_of(base: &str) -> &str {
    base.split(':').nth(3).unwrap_or_default()
}

/// The next model event; only polled while a stream exists.
async fn next_event(model: &mut Option<ModelStream>) -> Option<Result<ModelEvent, crate::model::ModelError>> {
    match model {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

type ModelStream = futures::stream::BoxStream<'static, Result<ModelEvent, crate::model::ModelError>>;

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(n-1))].
fn full_jitter(base_ms: u64, cap_ms: u64, n: u32) -> Duration {
    let ceiling = base_ms.saturating_mul(1 << (n - 1).min(20)).min(cap_ms);
    Duration::from_millis(rand::Rng::random_range(&mut rand::rng(), 0..=ceiling))
}

/// Drops the model stream (aborting the upstream request) and records the stop latency: from
/// the moment this worker learned of the stop (push, emit or heartbeat) to the abort.
fn cancelled(signals: &TurnSignals, model: Option<ModelStream>) -> Ending {
    drop(model);
    let asked = signals.cancel_at.lock().ok().and_then(|a| *a);
    if let Some(at) = asked {
        metrics::histogram!(m::WORKER_CANCEL_SECONDS).record(at.elapsed().as_secs_f64());
    }
    metrics::counter!(m::WORKER_CANCELS).increment(1);
    Ending::Cancelled
}

/// Writes the turn's end. Returns the outcome label for metrics.
async fn finish(shared: &Arc<Shared>, d: &Delivery, attempt: u32, ending: Ending) -> &'static str {
    let store = &shared.store;
    let mut args = FinishArgs {
        turn_id: &d.turn_id,
        attempt,
        entry_id: &d.entry_id,
        outcome: "done",
        prompt_tokens: 0,
        completion_tokens: 0,
        error_code: "",
        error_message: "",
        dead_letter: false,
    };
    let message;
    match ending {
        Ending::Done(u) => {
            args.prompt_tokens = u.prompt_tokens;
            args.completion_tokens = u.completion_tokens;
            metrics::histogram!(m::TURN_TOKENS).record(u.completion_tokens as f64);
        }
        Ending::Cancelled => args.outcome = "cancelled",
        Ending::Failed { code, message: msg, dead_letter } => {
            tracing::warn!(code, error = %msg, dead_letter, "turn failed");
            message = msg;
            args.outcome = "error";
            args.error_code = code;
            args.error_message = &message;
            args.dead_letter = dead_letter;
            if dead_letter {
                metrics::counter!(m::WORKER_DEAD_LETTERS).increment(1);
            }
        }
        Ending::Fenced => {
            tracing::info!("turn was taken over by another worker; stopping");
            return "fenced";
        }
        Ending::Released => {
            return match store.release_turn(&d.base, &d.turn_id, attempt).await {
                Ok(_) => "released",
                Err(e) => {
                    tracing::warn!(error = %e, "release failed; the lease will expire instead");
                    "abandoned"
                }
            };
        }
        Ending::Abandoned(e) => {
            tracing::error!(error = %e, "Redis failed mid-turn; leaving the turn to the lease");
            return "abandoned";
        }
    }
    let outcome: &'static str = match args.outcome {
        "done" => "done",
        "cancelled" => "cancelled",
        _ => "error",
    };
    match store.finish_turn(&d.base, d.partition, &args).await {
        Ok(Some(_)) => outcome,
        Ok(None) => "fenced",
        Err(e) => {
            tracing::error!(error = %e, "finish_turn failed; the lease will expire and the turn rerun");
            "abandoned"
        }
    }
}

//! Running one turn: start (fenced attempt), stream the model, coalesce, emit, run tool rounds,
//! finish, and, after a finished turn, start a background summary when one is due.
//!
//! - [`request`]: the first round's request: conversation, canary variant, retrieval;
//! - [`stream`]: the streaming loop (stop, heartbeats, retries, coalescing, tool rounds);
//! - [`round`]: the conversation across tool rounds, and the tool calls of a round.

mod request;
mod round;
mod stream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Delivery, Shared, TurnSignals};
use crate::metrics as m;
use crate::model::ModelUsage;
use crate::store::{FinishArgs, StartOutcome, StoreError, TurnAudit, TurnWriter, UsageSource};
use crate::upstream::summary;

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
    let load_started = Instant::now();
    let start = store.start_turn(&d.base, &d.turn_id, &d.entry_id, &shared.id).await;
    let (attempt, history, opts, created_us, started_us, ctx) = match start {
        Ok(StartOutcome::Run { attempt, history, opts, created_us, started_us, context }) => {
            (attempt, history, opts, created_us, started_us, context)
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
    let queue_wait = Duration::from_micros(started_us.saturating_sub(created_us));
    metrics::histogram!(m::TURN_QUEUE_WAIT_SECONDS).record(queue_wait.as_secs_f64());
    let signals = TurnSignals { cancel: CancellationToken::new(), cancel_at: Arc::new(Mutex::new(None)) };
    if let Ok(mut map) = shared.running.lock() {
        map.insert(d.turn_id.clone(), signals.clone());
    }
    metrics::gauge!(m::WORKER_ACTIVE_TURNS).increment(1.0);
    let began = Instant::now();
    let mut stats = Stats {
        deltas: 0,
        queue_wait,
        load_started,
        audit: None,
        answered: None,
        variant: crate::upstream::canary::CONTROL.into(),
        citations: Vec::new(),
    };
    let writer = store.writer(&d.base, &d.turn_id, &d.entry_id, attempt);
    let turn = stream::Turn { shared, d: &d, w: &writer, signals: &signals, ctx: &ctx };
    let ending = stream::run(turn, &history, &opts, &mut stats).await;
    if matches!(ending, Ending::Done(_)) {
        summarize_if_due(shared, &d, &history, &ctx);
    }
    metrics::gauge!(m::WORKER_ACTIVE_TURNS).decrement(1.0);
    if let Ok(mut map) = shared.running.lock() {
        map.remove(&d.turn_id);
    }
    let citations = (!stats.citations.is_empty()).then(|| serde_json::to_string(&stats.citations).unwrap_or_default());
    let outcome = finish(shared, &d, &writer, ending, stats.audit.as_ref(), citations.as_deref()).await;
    metrics::counter!(m::TURNS, "outcome" => outcome).increment(1);
    metrics::counter!(m::VARIANT_TURNS, "variant" => stats.variant.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!(m::TURN_DURATION_SECONDS, "outcome" => outcome).record(began.elapsed().as_secs_f64());
    metrics::histogram!(m::TURN_DELTAS).record(stats.deltas as f64);
}

pub(super) struct Stats {
    deltas: u64,
    queue_wait: Duration,
    /// When this worker began loading the turn (start_turn), for the session-load stage.
    load_started: Instant,
    /// Who answered the current round, until a write records it (see [`TurnAudit`]).
    audit: Option<TurnAudit>,
    /// The last round's audit, kept after a write recorded it: the finish carries it again when
    /// the turn's audit changed later (moderation went unchecked).
    answered: Option<TurnAudit>,
    /// The canary variant (`variant` label of the turn's metrics).
    variant: String,
    /// Chunks of reference material packed into the prompt.
    citations: Vec<crate::retrieval::pack::Cited>,
}

use crate::keys::tenant_of;

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(n-1))].
fn full_jitter(base_ms: u64, cap_ms: u64, n: u32) -> Duration {
    let ceiling = base_ms.saturating_mul(1 << (n - 1).min(20)).min(cap_ms);
    Duration::from_millis(rand::Rng::random_range(&mut rand::rng(), 0..=ceiling))
}

/// Spawns a background summary of older history when one is due. It runs after the turn, off
/// the streaming path, in the worker's task tracker (so a drain waits for it, bounded by
/// `context.summary_timeout_ms`).
fn summarize_if_due(
    shared: &Arc<Shared>,
    d: &Delivery,
    history: &[crate::payload::HistoryMessage],
    ctx: &crate::store::TurnContext,
) {
    let c = &shared.settings.context;
    let Some(fold) = summary::due(c, history, ctx.summary.as_ref().map(|(u, _)| u.as_str())) else { return };
    let previous = ctx.summary.as_ref().map(|(_, t)| t.clone());
    let job = summary::run(
        shared.store.clone(),
        shared.model.clone(),
        d.base.clone(),
        ctx.epoch.clone(),
        c.clone(),
        previous,
        fold,
    );
    shared.tracker.spawn(job.instrument(tracing::info_span!("summary", turn_id = %d.turn_id)));
}

/// Drops the model stream or running tools (aborting the upstream request or the tool call) and
/// records the stop latency: from the moment this worker learned of the stop (push, emit or
/// heartbeat) to the abort.
fn cancelled<T>(signals: &TurnSignals, work: T) -> Ending {
    drop(work);
    let asked = signals.cancel_at.lock().ok().and_then(|a| *a);
    if let Some(at) = asked {
        metrics::histogram!(m::WORKER_CANCEL_SECONDS).record(at.elapsed().as_secs_f64());
    }
    metrics::counter!(m::WORKER_CANCELS).increment(1);
    Ending::Cancelled
}

/// Writes the turn's end. Returns the outcome label for metrics.
async fn finish(
    shared: &Arc<Shared>,
    d: &Delivery,
    writer: &TurnWriter,
    ending: Ending,
    audit: Option<&TurnAudit>,
    citations: Option<&str>,
) -> &'static str {
    let mut args = FinishArgs {
        outcome: "done",
        prompt_tokens: 0,
        completion_tokens: 0,
        usage_source: UsageSource::Reported,
        error_code: "",
        error_message: "",
        dead_letter: false,
        audit,
        citations,
    };
    let message;
    match ending {
        Ending::Done(u) => {
            // Billing and quotas read these counts; say where they came from.
            args.usage_source = if u.estimated { UsageSource::Estimated } else { UsageSource::Reported };
            let usage_source = args.usage_source.as_str();
            tracing::info!(u.prompt_tokens, u.completion_tokens, usage_source, "turn usage");
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
            return match writer.release().await {
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
    match writer.finish(&args).await {
        Ok(Some(_)) => {
            // On a single Redis the finish freed the slot itself.
            if !shared.store.quota_with_enqueue() {
                release_quota(shared, d);
            }
            outcome
        }
        Ok(None) => "fenced",
        Err(e) => {
            tracing::error!(error = %e, "finish_turn failed; the lease will expire and the turn rerun");
            "abandoned"
        }
    }
}

/// Frees the ended turn's quota slot, off the turn's path, in Redis Cluster (its tenant's slot is
/// another Redis slot, so it cannot be part of the finish there). A lost release is caught by the
/// gateways' reconciliation.
fn release_quota(shared: &Arc<Shared>, d: &Delivery) {
    let (store, quotas) = (shared.store.clone(), shared.quotas.clone());
    let (base, turn_id) = (d.base.clone(), d.turn_id.clone());
    shared.tracker.spawn(async move {
        if let Err(e) = quotas.release_ended(&store, &base, &turn_id).await {
            tracing::debug!(error = %e, "cannot free the turn's quota slot");
        }
    });
}

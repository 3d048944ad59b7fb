//! The streaming loop of one turn.
//!
//! One `select!` watches, in priority order: the stop signal, the drain deadline, the coalescing
//! window, the current phase (a model round, a retry wait, or the round's tool calls), heartbeats
//! and the turn deadline. Nothing in it waits on a model or a tool except through the phase, so a
//! stop, a heartbeat or a flush is never held up by either.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::time::{sleep_until, Instant};

use super::round::Conversation;
use super::{cancelled, full_jitter, tenant_of, Ending, Stats};
use crate::guard::{Cut, TurnGuard};
use crate::metrics as m;
use crate::model::{ModelError, ModelEvent, ModelStream, ModelUsage};
use crate::payload;
use crate::settings_base::ms;
use crate::store::{StoreError, TurnAudit, TurnContext, TurnWriter, WriteOutcome};
use crate::tools::{ToolOutcome, ToolState};
use crate::worker::coalesce::Coalescer;
use crate::worker::{Delivery, Shared, TurnSignals};

/// What the loop needs to know about its turn.
pub(in crate::worker) struct Turn<'a> {
    pub shared: &'a Arc<Shared>,
    pub d: &'a Delivery,
    /// The attempt's fenced writes.
    pub w: &'a TurnWriter,
    pub signals: &'a TurnSignals,
    pub ctx: &'a TurnContext,
}

type ToolFuture<'a> = BoxFuture<'a, (usize, ToolOutcome)>;

/// What the turn is waiting for.
enum Phase<'a> {
    /// The user's message is with the moderation endpoint; the model is called once it passes.
    Screening(BoxFuture<'static, Option<Cut>>),
    /// A model round is streaming.
    Model(ModelStream),
    /// Waiting to retry an upstream that failed before the round's first output.
    Retry(Instant),
    /// The round's tool calls run; results by call index.
    Tools(FuturesUnordered<ToolFuture<'a>>, Vec<Option<ToolOutcome>>),
    /// The model's round ended; decided after the flush.
    RoundEnd,
}

/// What the phase produced.
enum Next {
    Screened(Option<Cut>),
    Model(Option<Result<ModelEvent, ModelError>>),
    RetryDue,
    Tool(usize, ToolOutcome),
}

impl Phase<'_> {
    async fn next(&mut self) -> Next {
        match self {
            Phase::Screening(check) => Next::Screened(check.await),
            Phase::Model(s) => Next::Model(s.next().await),
            Phase::Retry(at) => {
                sleep_until(*at).await;
                Next::RetryDue
            }
            Phase::Tools(running, _) => match running.next().await {
                Some((i, out)) => Next::Tool(i, out),
                None => std::future::pending().await,
            },
            Phase::RoundEnd => std::future::pending().await,
        }
    }
}

/// A fenced write's verdict for the loop: go on, or end the turn.
enum Verdict {
    Go,
    End(Ending),
}

fn verdict(w: Result<WriteOutcome, StoreError>, signals: &TurnSignals) -> Verdict {
    match w {
        Ok(WriteOutcome::Written { cancel: true, .. }) => {
            signals.mark_cancel_requested();
            Verdict::End(Ending::Cancelled)
        }
        Ok(WriteOutcome::Written { .. }) => Verdict::Go,
        Ok(WriteOutcome::Fenced) => Verdict::End(Ending::Fenced),
        Err(e) => Verdict::End(Ending::Abandoned(e)),
    }
}

pub(in crate::worker) async fn run(
    t: Turn<'_>,
    history: &[payload::HistoryMessage],
    opts: &Bytes,
    stats: &mut Stats,
) -> Ending {
    // The guard (redaction, moderation) sits between the model and every write of the answer.
    let mut guard = t.shared.guard.turn(tenant_of(&t.d.base));
    let ending = drive(t, history, opts, stats, &mut guard).await;
    // A check that failed open after the audit was written (an answer phrase) is marked by the
    // finish, which carries the audit again.
    if guard.unchecked() {
        if let Some(mut a) = stats.audit.take().or_else(|| stats.answered.clone()) {
            if !a.template.ends_with(crate::guard::UNCHECKED_MARK) {
                a.template.push_str(crate::guard::UNCHECKED_MARK);
            }
            stats.audit = Some(a);
        }
    }
    ending
}

async fn drive(
    t: Turn<'_>,
    history: &[payload::HistoryMessage],
    opts: &Bytes,
    stats: &mut Stats,
    guard: &mut TurnGuard,
) -> Ending {
    let Turn { shared, d, signals, w: writer, .. } = t;
    let w = &shared.settings.worker;
    let tools = &shared.tools;
    let began = Instant::now();
    let turn_deadline = began + ms(w.turn_timeout_ms);
    let heartbeat = ms(w.heartbeat_ms);
    let mut next_heartbeat = began + heartbeat;
    let abandon_ms = shared.settings.abandon_ms(tenant_of(&d.base));
    let prepared = super::request::prepare(&t, history, opts, stats.load_started).await;
    let template = prepared.template;
    stats.variant = prepared.variant;
    stats.citations = prepared.citations;
    let mut conv = Conversation::new(prepared.request, &t.ctx.tool_records);
    let mut model_ttft = std::time::Duration::ZERO;
    let message = history.last().filter(|m| m.role == "user").map_or("", |m| m.text.as_str());
    let mut phase = match guard.screen(message) {
        Some(check) => Phase::Screening(check),
        None => Phase::Model(crate::model::tracked(shared.model.stream(conv.request.clone()))),
    };
    let mut model_began = began;
    let mut retries = 0;
    let mut first_token = false;
    let mut round_output = false;
    let mut co = Coalescer::new(ms(w.coalesce_ms), w.max_delta_bytes);
    let mut usage = ModelUsage::default();
    // A round that failed after its first output: ends the turn once its text is flushed.
    let mut failed = None;

    loop {
        let due = co.deadline();
        tokio::select! {
            biased;
            _ = signals.cancel.cancelled() => {
                let ending = cancelled(signals, phase);
                flush_on_stop(writer, guard, &mut co, abandon_ms, stats).await;
                return ending;
            }
            _ = shared.release.cancelled() => return Ending::Released,
            _ = sleep_until(due.unwrap_or(turn_deadline)), if due.is_some() => {}
            cut = guard.next_cut(), if guard.checks_pending() => if let Some(Cut { code, message }) = cut {
                // The answer is cut: the model stops, what it generated so far is flushed.
                failed = Some(Ending::Failed { code, message, dead_letter: false });
                phase = Phase::RoundEnd;
            },
            next = phase.next() => match next {
                Next::Screened(Some(Cut { code, message })) => {
                    return Ending::Failed { code, message, dead_letter: false };
                }
                Next::Screened(None) => {
                    // The model's time to first token starts now, not with the screening.
                    model_began = Instant::now();
                    phase = Phase::Model(crate::model::tracked(shared.model.stream(conv.request.clone())));
                }
                Next::RetryDue => phase = Phase::Model(crate::model::tracked(shared.model.stream(conv.request.clone()))),
                Next::Model(Some(Ok(ModelEvent::Answering { upstream, model }))) => {
                    // Recorded by the round's next write, not by a round trip of its own.
                    let mut template = template.clone();
                    if guard.unchecked() {
                        template.push_str(crate::guard::UNCHECKED_MARK); // the message went unchecked
                    }
                    let audit = TurnAudit { upstream, model, template };
                    stats.answered = Some(audit.clone());
                    stats.audit = Some(audit);
                }
                Next::Model(Some(Ok(ModelEvent::Text(text)))) => {
                    if !first_token {
                        first_token = true;
                        model_ttft = model_began.elapsed();
                        metrics::histogram!(m::TURN_MODEL_TTFT_SECONDS).record(model_ttft.as_secs_f64());
                    }
                    round_output = true;
                    co.push_str(&guard.text(&text), Instant::now());
                    // The model's own text (unredacted) goes back to it in a tool round.
                    conv.push_text(&text);
                }
                Next::Model(Some(Ok(ModelEvent::ToolCall(call)))) => {
                    round_output = true;
                    conv.push_call(call);
                }
                Next::Model(Some(Ok(ModelEvent::Done(u)))) => {
                    usage.add(u);
                    phase = Phase::RoundEnd;
                }
                Next::Model(None) => phase = Phase::RoundEnd,
                Next::Model(Some(Err(e))) => {
                    // Replacing the phase drops the stream, which closes the request.
                    if round_output {
                        // Text already generated still goes out (the flush below), then the end.
                        let code = if matches!(e, ModelError::Timeout(_)) { e.code() } else { "upstream_failed" };
                        failed = Some(Ending::Failed { code, message: e.to_string(), dead_letter: false });
                        phase = Phase::RoundEnd;
                    } else {
                        let wait = e.retry_after().unwrap_or_default();
                        if !e.retryable() || retries >= w.upstream_retries || wait > ms(w.upstream_retry_max_ms) {
                            return Ending::Failed { code: e.code(), message: e.to_string(), dead_letter: !first_token };
                        }
                        retries += 1;
                        metrics::counter!(m::WORKER_UPSTREAM_RETRIES).increment(1);
                        let backoff = full_jitter(w.upstream_retry_base_ms, w.upstream_retry_max_ms, retries).max(wait);
                        let backoff_ms = backoff.as_millis() as u64;
                        tracing::info!(retry = retries, backoff_ms, error = %e, "retrying upstream");
                        conv.reset_round();
                        phase = Phase::Retry(Instant::now() + backoff);
                    }
                }
                Next::Tool(i, out) => {
                    let call = &conv.calls()[i];
                    let record = conv.record(i, out.state.as_str(), &out.content);
                    let key = conv.key(i);
                    let state = out.state.as_str();
                    let w = writer.tool_status(&call.name, state, Some((&key, &record))).await;
                    if let Verdict::End(e) = verdict(w, signals) {
                        return if matches!(e, Ending::Cancelled) { cancelled(signals, phase) } else { e };
                    }
                    next_heartbeat = Instant::now() + heartbeat;
                    if let Phase::Tools(_, results) = &mut phase {
                        results[i] = Some(out);
                        if results.iter().all(Option::is_some) {
                            let results = std::mem::take(results).into_iter().flatten().collect();
                            conv.close_round(results);
                            round_output = false;
                            phase = Phase::Model(crate::model::tracked(shared.model.stream(conv.request.clone())));
                        }
                    }
                }
            },
            _ = sleep_until(next_heartbeat) => {
                next_heartbeat = Instant::now() + heartbeat;
                match writer.heartbeat(abandon_ms).await {
                    Ok(None) => return Ending::Fenced,
                    Ok(Some(true)) => {
                        signals.mark_cancel_requested();
                        let ending = cancelled(signals, phase);
                        flush_on_stop(writer, guard, &mut co, abandon_ms, stats).await;
                        return ending;
                    }
                    Ok(Some(false)) => {}
                    Err(e) => return Ending::Abandoned(e),
                }
            }
            _ = sleep_until(turn_deadline) => {
                let message = "the answer took too long".to_string();
                return Ending::Failed { code: "turn_timeout", message, dead_letter: false };
            }
        }
        // Flush what is due; at the end of a round, flush everything (text goes out before the
        // round's tool statuses, in the order the model wrote them).
        let round_end = matches!(phase, Phase::RoundEnd);
        let now = Instant::now();
        if round_end {
            // The round's text ended: what the filter held is decided and goes out with it.
            co.push_str(&guard.end_round(), now);
        }
        while co.ready(now) || (round_end && co.deadline().is_some()) {
            let Some(text) = (if round_end { co.finish() } else { co.take(now) }) else { break };
            let audit = stats.audit.take();
            match verdict(writer.emit(&text, abandon_ms, audit.as_ref()).await, signals) {
                Verdict::Go => {
                    stats.deltas += 1;
                    next_heartbeat = Instant::now() + heartbeat;
                    if stats.deltas == 1 {
                        let ttft = stats.queue_wait + stats.load_started.elapsed();
                        metrics::histogram!(m::TURN_TTFT_SECONDS).record(ttft.as_secs_f64());
                        metrics::histogram!(m::VARIANT_TTFT_SECONDS, "variant" => stats.variant.clone())
                            .record(ttft.as_secs_f64());
                        metrics::histogram!(m::TURN_FLEET_OVERHEAD_SECONDS)
                            .record(ttft.saturating_sub(model_ttft).as_secs_f64());
                    }
                }
                Verdict::End(Ending::Cancelled) => {
                    let ending = cancelled(signals, phase);
                    flush_on_stop(writer, guard, &mut co, abandon_ms, stats).await;
                    return ending;
                }
                Verdict::End(e) => return e,
            }
        }
        if let Some(ending) = failed {
            return ending;
        }
        if !round_end {
            continue;
        }
        if conv.calls().is_empty() {
            if guard.checks_pending() {
                // The answer is complete but not yet checked: `done` waits for the last checks.
                continue;
            }
            return Ending::Done(usage);
        }
        if conv.rounds >= tools.max_rounds() {
            if conv.request.tools_exhausted {
                let message = "the model kept calling tools past the round limit".to_string();
                return Ending::Failed { code: "tool_limit", message, dead_letter: false };
            }
            // Tell the model, and ask once more with tools off.
            let note =
                format!("not run: the limit of {} tool rounds was reached; answer without tools", tools.max_rounds());
            let results =
                conv.calls().iter().map(|_| ToolOutcome { state: ToolState::Failed, content: note.clone() }).collect();
            conv.close_round(results);
            conv.request.tools_exhausted = true;
            round_output = false;
            phase = Phase::Model(crate::model::tracked(shared.model.stream(conv.request.clone())));
            continue;
        }
        // Tool statuses do not carry the audit: record it before the round's tools run.
        if let Some(a) = stats.audit.take() {
            match writer.audit(&a).await {
                Ok(true) => {}
                Ok(false) => return Ending::Fenced,
                Err(e) => return Ending::Abandoned(e),
            }
        }
        match start_tools(&t, &conv).await {
            Ok(p) => phase = p,
            Err(Ending::Cancelled) => return cancelled(signals, phase),
            Err(e) => return e,
        }
    }
}

/// On a stop with redaction on, the text the filter held (decided now: a match is redacted, safe
/// text released) and the coalescer's text go out in one last delta, so a stopped answer loses
/// nothing safe and leaks nothing held.
async fn flush_on_stop(w: &TurnWriter, guard: &mut TurnGuard, co: &mut Coalescer, abandon_ms: u64, stats: &mut Stats) {
    if !guard.redacts() {
        return;
    }
    co.push_str(&guard.end_round(), Instant::now());
    if let Some(text) = co.finish() {
        let audit = stats.audit.take();
        if let Err(e) = w.emit(&text, abandon_ms, audit.as_ref()).await {
            tracing::debug!(error = %e, "the stopped turn's last delta was not written");
        }
    }
}

/// Starts the round's calls: each gets a `running` status (with its record) and runs; a call an
/// earlier attempt finished is not run again, its recorded result is reused; a call an earlier
/// attempt left running is run again only if the tool is safe to repeat.
async fn start_tools<'a>(t: &Turn<'a>, conv: &Conversation) -> Result<Phase<'a>, Ending> {
    let Turn { shared, signals, w: writer, .. } = *t;
    let running: FuturesUnordered<ToolFuture<'a>> = FuturesUnordered::new();
    for (i, call) in conv.calls().iter().enumerate() {
        let earlier = conv.earlier(i).map(|r| (ToolState::parse(&r.state), r.result.clone()));
        let reuse = match earlier {
            Some((Some(ToolState::Running), _)) if !shared.tools.rerun_after_takeover(&call.name) => {
                Some(ToolOutcome {
                    state: ToolState::Failed,
                    content: "the call was interrupted when its worker stopped; its outcome is unknown".into(),
                })
            }
            Some((Some(state), result)) if state != ToolState::Running => Some(ToolOutcome { state, content: result }),
            _ => None,
        };
        if let Some(out) = reuse {
            running.push(Box::pin(async move { (i, out) }));
            continue;
        }
        let record = conv.record(i, ToolState::Running.as_str(), "");
        let w = writer.tool_status(&call.name, "running", Some((&conv.key(i), &record))).await;
        if let Verdict::End(e) = verdict(w, signals) {
            return Err(e);
        }
        let (tools, call, cancel) = (&shared.tools, call.clone(), signals.cancel.clone());
        running.push(Box::pin(async move { (i, tools.run(&call, &cancel).await) }));
    }
    let results = vec![None; conv.calls().len()];
    Ok(Phase::Tools(running, results))
}

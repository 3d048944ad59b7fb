//! What `/metrics` shows before anything happened: HELP text for every metric of
//! [`crate::metrics`], `chatfleet_build_info`, and the counters and gauges with known labels
//! registered at 0.
//!
//! A series that appears only with its first event breaks `rate()` over the window it appears in
//! and alerts that compare against it, so every series a role can emit with a known label set is
//! registered at start (Prometheus practice). Label values here mirror the code that emits them
//! (named beside each list); `tests/api/observability.rs` scrapes a fresh process to check them.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::metrics as m;
use crate::settings::Settings;

/// Connection transports (`Gateway::admit` callers: ws.rs, sse.rs).
const TRANSPORTS: [&str; 3] = ["ws", "sse", "poll"];
/// `resume_label` in gateway/feed.rs.
const RESUMES: [&str; 2] = ["replay", "snapshot"];
/// `authn::check`.
const AUTH_REASONS: [&str; 3] = ["missing", "expired", "invalid"];
/// Policy closes in gateway/ws.rs.
const POLICY_REASONS: [&str; 4] = ["rejected_frames", "token_expired", "forbidden", "invalid_utf8"];
/// `ws::code_label`.
const REJECT_CODES: [&str; 11] = [
    "rate_limited",
    "too_large",
    "bad_request",
    "unauthorized",
    "forbidden",
    "busy",
    "degraded",
    "not_found",
    "unavailable",
    "quota_exceeded",
    "too_many_connections",
];
/// `Hub::request_resync` causes.
const CATCHUP_CAUSES: [&str; 3] = ["lagged", "reconnect", "topology"];
/// Turn outcomes (worker/turn.rs `finish`).
const TURN_OUTCOMES: [&str; 5] = ["done", "error", "cancelled", "fenced", "released"];
/// `TimeoutKind::code`.
const TIMEOUT_KINDS: [&str; 5] = [
    "upstream_queue_timeout",
    "upstream_connect_timeout",
    "upstream_first_token_timeout",
    "upstream_idle_timeout",
    "upstream_total_timeout",
];
/// `ModelError::code` besides the timeouts, and `answered`.
const UPSTREAM_OUTCOMES: [&str; 6] = [
    "answered",
    "upstream_unavailable",
    "upstream_rate_limited",
    "upstream_rejected",
    "context_overflow",
    "upstream_failed",
];
/// Ended `ToolState`s.
const TOOL_STATES: [&str; 3] = ["done", "failed", "timed_out"];
/// Restore results (gateway/conversations.rs `open_feed`).
const RESTORE_RESULTS: [&str; 4] = ["restored", "raced", "missing", "failed"];
/// Summary outcomes (upstream/summary.rs).
const SUMMARY_OUTCOMES: [&str; 5] = ["stored", "stale", "empty", "failed", "busy"];

/// Redaction kinds (guard/redact.rs).
const REDACTION_KINDS: [&str; 4] = ["email", "phone", "card", "pattern"];
/// Moderation stages (guard/turn.rs).
const MODERATION_STAGES: [&str; 2] = ["input", "output"];

/// HELP text (and unit) of every metric. Called on the recorder by [`crate::metrics::install`].
pub fn describe() {
    describe_gauge!(m::BUILD_INFO, "Always 1; labels carry the version of the running build.");
    describe_gauge!(m::GATEWAY_CONNECTIONS, "Open client connections, by transport (ws, sse, poll).");
    describe_counter!(m::GATEWAY_CONNECTS, "Client connections opened, by transport.");
    describe_counter!(
        m::GATEWAY_OPENINGS_TIMED_OUT,
        "Accepted connections closed unserved: no opening slot (gateway.max_opening_connections) in time."
    );
    describe_counter!(m::GATEWAY_RESUMES, "Hellos and feed opens, by how the client resumed (replay, snapshot).");
    describe_counter!(m::GATEWAY_FRAMES_OUT, "Frames written to clients.");
    describe_counter!(m::GATEWAY_BYTES_OUT, Unit::Bytes, "Bytes written to clients.");
    describe_counter!(m::GATEWAY_REJECTED, "Client frames or requests refused, by error code.");
    describe_counter!(
        m::GATEWAY_ATTACHMENTS,
        "Attachments (media references) of sends, by outcome: accepted, or refused by the [media] limits."
    );
    describe_counter!(
        m::GATEWAY_AUTH_FAILURES,
        "Requests whose credentials were refused, by reason (missing, expired, invalid)."
    );
    describe_counter!(m::GATEWAY_POLICY_CLOSES, "WebSockets closed for abuse or policy, by reason.");
    describe_counter!(
        m::GATEWAY_DEGRADED,
        "Sends refused by admission control because a partition's queue was too long or too old."
    );
    describe_gauge!(
        m::GATEWAY_MEASURED_TURNS_PER_SEC,
        "Turns finished per second across all partitions, as this gateway's admission control measures it."
    );
    describe_counter!(m::GATEWAY_SLOW_CLOSES, "Connections closed because they read too slowly.");
    describe_counter!(m::GATEWAY_CATCHUPS, "Catch-ups from the session log after a pub/sub gap, by cause.");
    describe_histogram!(m::GATEWAY_ACK_SECONDS, Unit::Seconds, "Gateway receiving a send to its ack written.");
    describe_histogram!(m::TURN_QUEUE_WAIT_SECONDS, Unit::Seconds, "Turn enqueued to started by a worker.");
    describe_histogram!(m::TURN_MODEL_TTFT_SECONDS, Unit::Seconds, "Turn started to the model's first token.");
    describe_histogram!(m::TURN_SESSION_LOAD_SECONDS, Unit::Seconds, "Session load and context packing of a turn.");
    describe_histogram!(
        m::TURN_RETRIEVAL_SECONDS,
        Unit::Seconds,
        "Retrieval stage of a turn: search and packing of reference material."
    );
    describe_counter!(m::RETRIEVALS, "Retrieval searches, by outcome (packed, empty, timeout, failed).");
    describe_counter!(m::VARIANT_TURNS, "Turns ended, by canary variant (its name, or control) and outcome.");
    describe_histogram!(m::VARIANT_TTFT_SECONDS, Unit::Seconds, "Turn enqueued to its first delta, by canary variant.");
    describe_histogram!(
        m::TURN_FLEET_OVERHEAD_SECONDS,
        Unit::Seconds,
        "Enqueue to first delta stored, minus the upstream's own time to first token."
    );
    describe_gauge!(
        m::WORKER_UPSTREAM_STREAMS_OPEN,
        "Upstream model streams open in this worker; above active turns means orphaned requests."
    );
    describe_histogram!(m::TURN_TTFT_SECONDS, Unit::Seconds, "Turn enqueued to its first delta stored.");
    describe_histogram!(m::TURN_DURATION_SECONDS, Unit::Seconds, "Whole turn, by outcome.");
    describe_counter!(m::TURNS, "Turns ended, by outcome (done, error, cancelled, fenced, released).");
    describe_histogram!(m::TURN_DELTAS, "Deltas per turn.");
    describe_histogram!(m::TURN_TOKENS, "Completion tokens per turn (reported by the upstream, or counted).");
    describe_gauge!(m::WORKER_ACTIVE_TURNS, "Turns running in this worker.");
    describe_gauge!(m::WORKER_CAPACITY, "The worker's turn capacity (worker.max_concurrent_turns).");
    describe_counter!(m::WORKER_RECLAIMS, "Turns taken over from a dead or stalled worker.");
    describe_counter!(m::WORKER_CANCELS, "Turns stopped by the user.");
    describe_counter!(m::WORKER_WRITE_RETRIES, "Turn writes sent again while Redis could not be reached.");
    describe_counter!(
        m::WORKER_LOST_TEXT_RESENT,
        "Deltas re-sent because Redis had lost acknowledged ones (a failover that lost writes)."
    );
    describe_counter!(m::WORKER_UPSTREAM_RETRIES, "Upstream requests retried after failing before their first token.");
    describe_counter!(m::WORKER_DEAD_LETTERS, "Turns moved to a dead-letter stream.");
    describe_histogram!(m::WORKER_CANCEL_SECONDS, Unit::Seconds, "Stop requested to the upstream stream dropped.");
    describe_histogram!(
        m::UPSTREAM_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a request waited for a concurrency slot of its upstream."
    );
    describe_gauge!(m::UPSTREAM_QUEUED, "Requests waiting for a slot of their upstream.");
    describe_gauge!(m::UPSTREAM_IN_FLIGHT, "Requests holding a slot of their upstream.");
    describe_counter!(m::UPSTREAM_REQUESTS, "Upstream requests, by upstream and outcome (answered or an error code).");
    describe_counter!(m::UPSTREAM_FALLBACKS, "Fallbacks to the next upstream of a chain, by the upstream that failed.");
    describe_histogram!(m::UPSTREAM_TTFT_SECONDS, Unit::Seconds, "Upstream request sent to its first token.");
    describe_counter!(m::UPSTREAM_TIMEOUTS, "Upstream timeouts, by upstream and kind.");
    describe_counter!(
        m::UPSTREAM_USAGE_ESTIMATED,
        "Upstream answers without usage, whose tokens chatfleet counted itself, by upstream."
    );
    describe_counter!(m::TOOL_CALLS, "Tool calls, by tool and end state (done, failed, timed_out).");
    describe_histogram!(m::TOOL_SECONDS, Unit::Seconds, "Tool call duration, by tool.");
    describe_histogram!(m::CONTEXT_PROMPT_TOKENS, "Prompt tokens sent after packing, by upstream.");
    describe_counter!(m::CONTEXT_DROPPED_MESSAGES, "History messages left out by context packing, by upstream.");
    describe_counter!(m::SUMMARIES, "Background summaries, by outcome.");
    describe_histogram!(m::SUMMARY_SECONDS, Unit::Seconds, "Duration of a background summary call.");
    describe_gauge!(m::QUEUE_LAG, "Turns not yet delivered to a worker, by partition.");
    describe_gauge!(m::QUEUE_PENDING, "Turns delivered and not finished, by partition.");
    describe_gauge!(m::QUEUE_OLDEST_PENDING_SECONDS, Unit::Seconds, "Age of the oldest unfinished turn, by partition.");
    describe_gauge!(
        m::ARCHIVE_BACKLOG,
        "Finished turns in the archive streams not yet written to PostgreSQL (the archive's lag), all partitions."
    );
    describe_counter!(m::ARCHIVE_TURNS, "Turns written to the PostgreSQL archive (redeliveries not counted).");
    describe_counter!(
        m::ARCHIVE_WRITE_ERRORS,
        "Archive batches PostgreSQL refused or timed out (retried with backoff)."
    );
    describe_counter!(m::ARCHIVE_MALFORMED, "Archive stream entries that could not be decoded (logged and dropped).");
    describe_histogram!(m::ARCHIVE_BATCH_SECONDS, Unit::Seconds, "One archive batch's PostgreSQL transaction.");
    describe_counter!(
        m::ARCHIVE_RESTORES,
        "Sessions Redis lost, looked up in the archive on open, by result (restored, raced, missing, failed)."
    );
    describe_counter!(m::ARCHIVE_RETENTION_DELETED, "Conversations deleted by the archive's retention job.");
    describe_counter!(
        m::GUARD_REDACTIONS,
        "Matches the redaction filter replaced, by kind (email, phone, card, pattern)."
    );
    describe_histogram!(
        m::GUARD_MODERATION_SECONDS,
        Unit::Seconds,
        "One moderation call, by stage (input: the user's message, output: an answer phrase)."
    );
    describe_counter!(m::GUARD_MODERATION_FLAGGED, "Texts the moderation endpoint flagged, by stage.");
    describe_counter!(m::GUARD_MODERATION_ERRORS, "Moderation calls that failed or timed out, by stage.");
}

/// `chatfleet_build_info{version, role}` = 1.
fn build_info(role: &'static str) {
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "role" => role).set(1.0);
}

// `increment(0)` creates the series without changing one that already counts.
fn counter_at_zero(name: &'static str, labels: &[(&'static str, String)]) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
    metrics::counter!(name, labels).increment(0);
}

fn gauge_at_zero(name: &'static str, labels: &[(&'static str, String)]) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
    metrics::gauge!(name, labels).increment(0.0);
}

/// Registers the gateway's series at 0.
pub fn register_gateway() {
    build_info("gateway");
    for t in TRANSPORTS {
        gauge_at_zero(m::GATEWAY_CONNECTIONS, &[("transport", t.into())]);
        counter_at_zero(m::GATEWAY_CONNECTS, &[("transport", t.into())]);
    }
    counter_at_zero(m::GATEWAY_OPENINGS_TIMED_OUT, &[]);
    RESUMES.into_iter().for_each(|r| counter_at_zero(m::GATEWAY_RESUMES, &[("resume", r.into())]));
    AUTH_REASONS.into_iter().for_each(|r| counter_at_zero(m::GATEWAY_AUTH_FAILURES, &[("reason", r.into())]));
    POLICY_REASONS.into_iter().for_each(|r| counter_at_zero(m::GATEWAY_POLICY_CLOSES, &[("reason", r.into())]));
    REJECT_CODES.into_iter().for_each(|c| counter_at_zero(m::GATEWAY_REJECTED, &[("code", c.into())]));
    // commands::send_opts.
    ["accepted", "refused"].into_iter().for_each(|o| counter_at_zero(m::GATEWAY_ATTACHMENTS, &[("outcome", o.into())]));
    CATCHUP_CAUSES.into_iter().for_each(|c| counter_at_zero(m::GATEWAY_CATCHUPS, &[("cause", c.into())]));
    for name in [m::GATEWAY_FRAMES_OUT, m::GATEWAY_BYTES_OUT, m::GATEWAY_DEGRADED, m::GATEWAY_SLOW_CLOSES] {
        counter_at_zero(name, &[]);
    }
}

/// Registers an archiver's series at 0 (workers with `archive.url` set, `chatfleet archiver`).
pub fn register_archiver() {
    gauge_at_zero(m::ARCHIVE_BACKLOG, &[]);
    for name in [m::ARCHIVE_TURNS, m::ARCHIVE_WRITE_ERRORS, m::ARCHIVE_MALFORMED, m::ARCHIVE_RETENTION_DELETED] {
        counter_at_zero(name, &[]);
    }
}

/// Registers a gateway's restore series at 0 (gateways with an archive).
pub fn register_restores() {
    RESTORE_RESULTS.into_iter().for_each(|r| counter_at_zero(m::ARCHIVE_RESTORES, &[("result", r.into())]));
}

/// Registers the worker's series at 0: per-upstream and per-tool series for the upstreams and
/// tools `settings` declares.
pub fn register_worker(settings: &Settings) {
    build_info("worker");
    TURN_OUTCOMES.into_iter().for_each(|o| counter_at_zero(m::TURNS, &[("outcome", o.into())]));
    for name in [
        m::WORKER_RECLAIMS,
        m::WORKER_CANCELS,
        m::WORKER_LOST_TEXT_RESENT,
        m::WORKER_WRITE_RETRIES,
        m::WORKER_UPSTREAM_RETRIES,
        m::WORKER_DEAD_LETTERS,
    ] {
        counter_at_zero(name, &[]);
    }
    gauge_at_zero(m::WORKER_ACTIVE_TURNS, &[]);
    gauge_at_zero(m::WORKER_UPSTREAM_STREAMS_OPEN, &[]);
    for name in settings.upstreams.keys() {
        let u = || ("upstream", name.clone());
        for o in UPSTREAM_OUTCOMES.iter().chain(TIMEOUT_KINDS.iter()) {
            counter_at_zero(m::UPSTREAM_REQUESTS, &[u(), ("outcome", o.to_string())]);
        }
        TIMEOUT_KINDS.into_iter().for_each(|k| counter_at_zero(m::UPSTREAM_TIMEOUTS, &[u(), ("kind", k.into())]));
        counter_at_zero(m::UPSTREAM_FALLBACKS, &[u()]);
        counter_at_zero(m::UPSTREAM_USAGE_ESTIMATED, &[u()]);
        counter_at_zero(m::CONTEXT_DROPPED_MESSAGES, &[u()]);
        gauge_at_zero(m::UPSTREAM_QUEUED, &[u()]);
        gauge_at_zero(m::UPSTREAM_IN_FLIGHT, &[u()]);
    }
    for tool in settings.tools.declared.keys() {
        TOOL_STATES
            .into_iter()
            .for_each(|s| counter_at_zero(m::TOOL_CALLS, &[("tool", tool.clone()), ("state", s.into())]));
    }
    SUMMARY_OUTCOMES.into_iter().for_each(|o| counter_at_zero(m::SUMMARIES, &[("outcome", o.into())]));
    REDACTION_KINDS.into_iter().for_each(|k| counter_at_zero(m::GUARD_REDACTIONS, &[("kind", k.into())]));
    for s in MODERATION_STAGES {
        counter_at_zero(m::GUARD_MODERATION_FLAGGED, &[("stage", s.into())]);
        counter_at_zero(m::GUARD_MODERATION_ERRORS, &[("stage", s.into())]);
    }
    if settings.archive.enabled() && !settings.retrieval.rules.is_empty() {
        crate::retrieval::OUTCOMES.into_iter().for_each(|o| counter_at_zero(m::RETRIEVALS, &[("outcome", o.into())]));
    }
    // Canary variants come from settings, so the label's values are bounded by them.
    let canaries = settings.routing.rules.iter().filter_map(|r| r.canary.as_ref().map(|c| c.name.clone()));
    let variants: std::collections::BTreeSet<String> =
        canaries.chain([crate::upstream::canary::CONTROL.to_string()]).collect();
    for v in variants {
        for o in TURN_OUTCOMES {
            counter_at_zero(m::VARIANT_TURNS, &[("variant", v.clone()), ("outcome", o.into())]);
        }
    }
}

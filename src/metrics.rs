//! Metric names (Prometheus), as documented constants, and the exporter.
//!
//! Labels are low-cardinality only: never a session, tenant or turn id. HELP texts and the
//! series registered at 0 are in [`crate::metrics_catalog`].

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: open client connections, by `transport` (ws, sse, poll).
pub const GATEWAY_CONNECTIONS: &str = "chatfleet_gateway_connections";
/// Counter: connections opened, by `transport`.
pub const GATEWAY_CONNECTS: &str = "chatfleet_gateway_connects_total";
/// Counter: accepted connections closed unserved: no opening slot within the header-read timeout.
pub const GATEWAY_OPENINGS_TIMED_OUT: &str = "chatfleet_gateway_openings_timed_out_total";
/// Counter: hellos, by `resume` (replay, snapshot).
pub const GATEWAY_RESUMES: &str = "chatfleet_gateway_resumes_total";
/// Counter: frames written to clients.
pub const GATEWAY_FRAMES_OUT: &str = "chatfleet_gateway_frames_out_total";
/// Counter: bytes written to clients.
pub const GATEWAY_BYTES_OUT: &str = "chatfleet_gateway_bytes_out_total";
/// Counter: client frames or requests refused, by `code`.
pub const GATEWAY_REJECTED: &str = "chatfleet_gateway_rejected_total";
/// Counter: attachments of sends (media by reference), by `outcome` (accepted, refused).
pub const GATEWAY_ATTACHMENTS: &str = "chatfleet_gateway_attachments_total";
/// Counter: stateless OpenAI requests by whether a pre-joined session was ready (`outcome` hit,
/// miss): a miss pays an SSUBSCRIBE round trip before its turn is sent.
pub const GATEWAY_PREJOINS: &str = "chatfleet_gateway_prejoins_total";
/// Counter: requests whose credentials were refused, by `reason` (missing, expired, invalid).
pub const GATEWAY_AUTH_FAILURES: &str = "chatfleet_gateway_auth_failures_total";
/// Counter: JWKS fetches (`auth.jwks_url`), by `result` (ok, error).
pub const AUTH_JWKS_FETCHES: &str = "chatfleet_auth_jwks_fetches_total";
/// Counter: session opens (WebSocket connects, SSE streams, long-polls) refused by the per-IP or
/// per-user open rate, by `scope` (ip, user).
pub const GATEWAY_OPENS_LIMITED: &str = "chatfleet_gateway_opens_limited_total";
/// Counter: requests refused because their `Origin` (or, in dev mode, `Host`) is not allowed.
pub const GATEWAY_ORIGIN_REFUSED: &str = "chatfleet_gateway_origin_refused_total";
/// Counter: WebSockets closed for abuse or policy, by `reason` (rejected_frames, token_expired,
/// forbidden, invalid_utf8).
pub const GATEWAY_POLICY_CLOSES: &str = "chatfleet_gateway_policy_closes_total";
/// Counter: sends refused by admission control (`degraded`), because a partition's queue was too
/// long or too old.
pub const GATEWAY_DEGRADED: &str = "chatfleet_gateway_degraded_total";
/// Gauge: turns finished per second across all partitions, as measured by this gateway's
/// admission control from Redis (the basis of `retry_after_ms`).
pub const GATEWAY_MEASURED_TURNS_PER_SEC: &str = "chatfleet_gateway_measured_turns_per_second";
/// Counter: connections closed because they read too slowly.
pub const GATEWAY_SLOW_CLOSES: &str = "chatfleet_gateway_slow_client_closes_total";
/// Counter: catch-ups from the session log after a pub/sub gap, by `cause`.
pub const GATEWAY_CATCHUPS: &str = "chatfleet_gateway_log_catchups_total";
/// Histogram (s): gateway receiving `send` to the `ack` written.
pub const GATEWAY_ACK_SECONDS: &str = "chatfleet_gateway_ack_seconds";

/// Histogram (s): turn enqueued to started by a worker (queue wait).
pub const TURN_QUEUE_WAIT_SECONDS: &str = "chatfleet_turn_queue_wait_seconds";
/// Histogram (s): turn started to the model's first token (upstream time to first token).
pub const TURN_MODEL_TTFT_SECONDS: &str = "chatfleet_turn_model_ttft_seconds";
/// Histogram (s): session load and context packing (start_turn, context read, packing).
pub const TURN_SESSION_LOAD_SECONDS: &str = "chatfleet_turn_session_load_seconds";
/// Histogram (s): the retrieval stage of a turn's TTFT (search and packing of reference
/// material, turns with a retrieval rule only).
pub const TURN_RETRIEVAL_SECONDS: &str = "chatfleet_turn_retrieval_seconds";
/// Counter: retrieval searches by `outcome` (packed, empty, timeout, failed).
pub const RETRIEVALS: &str = "chatfleet_retrievals_total";
/// Counter: turns ended, by canary `variant` (a canary's name, or `control`) and `outcome`.
pub const VARIANT_TURNS: &str = "chatfleet_variant_turns_total";
/// Histogram (s): turn enqueued to its first delta stored, by canary `variant`.
pub const VARIANT_TTFT_SECONDS: &str = "chatfleet_variant_ttft_seconds";
/// Histogram (s): what the fleet adds to the model's own TTFT: enqueue to first delta stored,
/// minus the upstream's time to first token.
pub const TURN_FLEET_OVERHEAD_SECONDS: &str = "chatfleet_turn_fleet_overhead_seconds";
/// Gauge: upstream model streams open in this worker. Each running turn owns at most one, so
/// `chatfleet_worker_upstream_streams_open - chatfleet_worker_active_turns > 0` means orphaned
/// upstream requests (started, neither finished nor aborted).
pub const WORKER_UPSTREAM_STREAMS_OPEN: &str = "chatfleet_worker_upstream_streams_open";
/// Histogram (s): turn enqueued to its first delta stored (what the user waits, minus the wire).
pub const TURN_TTFT_SECONDS: &str = "chatfleet_turn_ttft_seconds";
/// Histogram (s): whole turn, by `outcome`.
pub const TURN_DURATION_SECONDS: &str = "chatfleet_turn_duration_seconds";
/// Counter: turns ended, by `outcome` (done, error, cancelled, fenced, released).
pub const TURNS: &str = "chatfleet_turns_total";
/// Histogram: deltas per turn.
pub const TURN_DELTAS: &str = "chatfleet_turn_deltas";
/// Histogram: completion tokens per turn.
pub const TURN_TOKENS: &str = "chatfleet_turn_tokens";
/// Gauge: turns running in this worker.
pub const WORKER_ACTIVE_TURNS: &str = "chatfleet_worker_active_turns";
/// Gauge: the worker's turn capacity (`worker.max_concurrent_turns`).
pub const WORKER_CAPACITY: &str = "chatfleet_worker_capacity";
/// Counter: turns taken over from a dead or stalled worker.
pub const WORKER_RECLAIMS: &str = "chatfleet_worker_reclaims_total";
/// Counter: turn writes sent again while Redis could not be reached (same write index).
pub const WORKER_WRITE_RETRIES: &str = "chatfleet_worker_write_retries_total";
/// Counter: deltas re-sent because Redis had lost acknowledged ones (a failover lost writes).
pub const WORKER_LOST_TEXT_RESENT: &str = "chatfleet_worker_lost_text_resent_total";
/// Counter: turns stopped by the user.
pub const WORKER_CANCELS: &str = "chatfleet_worker_cancels_total";
/// Counter: upstream requests retried after failing before their first token.
pub const WORKER_UPSTREAM_RETRIES: &str = "chatfleet_worker_upstream_retries_total";
/// Counter: turns moved to a dead-letter stream (retries exhausted, or too many lost workers).
pub const WORKER_DEAD_LETTERS: &str = "chatfleet_worker_dead_letters_total";
/// Histogram (s): stop requested to the upstream stream dropped.
pub const WORKER_CANCEL_SECONDS: &str = "chatfleet_worker_cancel_seconds";

/// Histogram (s): time a request waited for a concurrency slot of its upstream, by `upstream`.
pub const UPSTREAM_QUEUE_WAIT_SECONDS: &str = "chatfleet_upstream_queue_wait_seconds";
/// Gauge: requests waiting for a slot of their upstream (queued), by `upstream`.
pub const UPSTREAM_QUEUED: &str = "chatfleet_upstream_queued";
/// Gauge: requests holding a slot of their upstream, by `upstream`.
pub const UPSTREAM_IN_FLIGHT: &str = "chatfleet_upstream_in_flight";
/// Counter: upstream requests by `upstream` and `outcome` (`answered` or an error code).
pub const UPSTREAM_REQUESTS: &str = "chatfleet_upstream_requests_total";
/// Counter: fallbacks to the next upstream of a chain, by the `upstream` that failed.
pub const UPSTREAM_FALLBACKS: &str = "chatfleet_upstream_fallbacks_total";
/// Histogram (s): request sent to the first token, by `upstream`.
pub const UPSTREAM_TTFT_SECONDS: &str = "chatfleet_upstream_ttft_seconds";
/// Counter: upstream timeouts by `upstream` and `kind` (the error code).
pub const UPSTREAM_TIMEOUTS: &str = "chatfleet_upstream_timeouts_total";
/// Counter: tool calls by `tool` and end `state` (done, failed, timed_out).
pub const TOOL_CALLS: &str = "chatfleet_tool_calls_total";
/// Histogram (s): tool call duration, by `tool`.
pub const TOOL_SECONDS: &str = "chatfleet_tool_seconds";
/// Histogram: prompt tokens sent after packing, by `upstream`.
pub const CONTEXT_PROMPT_TOKENS: &str = "chatfleet_context_prompt_tokens";
/// Counter: history messages left out by packing, by `upstream`.
pub const CONTEXT_DROPPED_MESSAGES: &str = "chatfleet_context_dropped_messages_total";
/// Counter: background summaries by `outcome` (stored, stale, empty, failed, busy).
pub const SUMMARIES: &str = "chatfleet_summaries_total";
/// Histogram (s): duration of a background summary call.
pub const SUMMARY_SECONDS: &str = "chatfleet_summary_seconds";

/// Counter: upstream answers that carried no usage, whose tokens were counted here instead
/// (usage marked estimated), by `upstream`.
pub const UPSTREAM_USAGE_ESTIMATED: &str = "chatfleet_upstream_usage_estimated_total";
/// Gauge: always 1, labelled with the build's `version` and the process's `role`.
pub const BUILD_INFO: &str = "chatfleet_build_info";

/// Gauge: turns not yet delivered to a worker, by `partition` (exported by one leader process).
pub const QUEUE_LAG: &str = "chatfleet_queue_lag";
/// Gauge: turns delivered and not finished, by `partition`.
pub const QUEUE_PENDING: &str = "chatfleet_queue_pending";
/// Gauge (s): age of the oldest unfinished turn, by `partition`.
pub const QUEUE_OLDEST_PENDING_SECONDS: &str = "chatfleet_queue_oldest_pending_seconds";
/// Histogram: ops per `cf3_batch` call (group commit; 1 on an idle system).
pub const REDIS_BATCH_OPS: &str = "chatfleet_redis_batch_ops";
/// Histogram (s): duration of one `cf3_batch` call, as its process saw it.
pub const REDIS_BATCH_SECONDS: &str = "chatfleet_redis_batch_seconds";

/// Gauge: finished turns in the archive streams not yet written to PostgreSQL (the archive's
/// lag), summed over partitions; every archiver reports the same global figure.
pub const ARCHIVE_BACKLOG: &str = "chatfleet_archive_backlog";
/// Counter: turns written to the archive (redeliveries that found their row not counted).
pub const ARCHIVE_TURNS: &str = "chatfleet_archive_turns_total";
/// Counter: archive batches PostgreSQL refused or timed out (retried with backoff).
pub const ARCHIVE_WRITE_ERRORS: &str = "chatfleet_archive_write_errors_total";
/// Counter: archive stream entries that could not be decoded (logged and dropped).
pub const ARCHIVE_MALFORMED: &str = "chatfleet_archive_malformed_total";
/// Histogram (s): one archive batch's transaction.
pub const ARCHIVE_BATCH_SECONDS: &str = "chatfleet_archive_batch_seconds";
/// Counter: sessions rebuilt from the archive on open, by `result` (restored, missing, failed).
pub const ARCHIVE_RESTORES: &str = "chatfleet_archive_restores_total";
/// Counter: conversations deleted by the retention job.
pub const ARCHIVE_RETENTION_DELETED: &str = "chatfleet_archive_retention_deleted_total";

/// Counter: matches the redaction filter replaced, by `kind` (email, phone, card, pattern).
pub const GUARD_REDACTIONS: &str = "chatfleet_guard_redactions_total";
/// Histogram (s): one moderation call, by `stage` (input: the user's message; output: an answer
/// phrase), whatever its outcome.
pub const GUARD_MODERATION_SECONDS: &str = "chatfleet_guard_moderation_seconds";
/// Counter: texts the moderation endpoint flagged, by `stage`.
pub const GUARD_MODERATION_FLAGGED: &str = "chatfleet_guard_moderation_flagged_total";
/// Counter: moderation calls that failed or timed out, by `stage`.
pub const GUARD_MODERATION_ERRORS: &str = "chatfleet_guard_moderation_errors_total";

/// Installs the global recorder and returns the handle that renders `/metrics`. Idempotent: a
/// second call (tests, `dev` running several roles) returns a handle to the first recorder.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Sub-millisecond buckets: the queue wait and the gateway's ack are a few hundred µs
            // on a healthy fleet, and p50/p99 must be readable against sub-ms targets.
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 120.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TURN_DELTAS.into()),
                        &[1.0, 5.0, 20.0, 50.0, 100.0, 250.0, 1000.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(REDIS_BATCH_OPS.into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TURN_TOKENS.into()),
                        &[1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 4000.0],
                    )
                })
                .expect("static bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            metrics::with_local_recorder(&recorder, crate::metrics_catalog::describe);
            // Another recorder may be installed by an embedding program; ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

//! What SREs see: Prometheus series with exact values for a known scenario, and one trace
//! spanning the gateway and the worker.

use std::time::Duration;

use chatfleet::protocol::EventBody;
use nix::sys::signal::Signal;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::*;
use crate::procs::*;

/// Scrapes a process's `/metrics`, waiting (with a deadline) until it answers.
async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return r.text().await.unwrap();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no /metrics on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series (`name` or `name{labels}` exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_after_known_turns_and_a_takeover_have_exact_values() {
    let mut s = test_settings();
    s.worker.lease_ms = 600;
    s.worker.heartbeat_ms = 200;
    s.redis.command_timeout_ms = 400;
    s.worker.sweep_interval_ms = 100;
    s.model.demo.max_tokens = 30;
    let app = TestApp::with(s, 1, 0).await;
    let raw = app.raw().await;
    let (a, port_a) = WorkerProc::spawn_with_metrics(&app.settings);
    wait_joined(&raw, &app.store.keys().stream(0), a.pid()).await;
    let mut c = app.client(0, &uid("s")).await;
    for i in 0..3 {
        let (turn, _) = c.send_and_ack(&uid("m"), &format!("count me {i}")).await;
        c.until_end(&turn).await;
    }
    // The outcome is counted just after `finish_turn` returns, so after the client saw `done`.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let text = loop {
        let text = scrape(port_a).await;
        if value(&text, r#"chatfleet_turns_total{outcome="done"}"#) == Some(3.0) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "three turns never counted done:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(value(&text, "chatfleet_turn_ttft_seconds_count"), Some(3.0), "{text}");
    assert_eq!(value(&text, "chatfleet_turn_queue_wait_seconds_count"), Some(3.0));
    // The TTFT breakdown: every stage recorded once per turn.
    assert_eq!(value(&text, "chatfleet_turn_session_load_seconds_count"), Some(3.0));
    assert_eq!(value(&text, "chatfleet_turn_model_ttft_seconds_count"), Some(3.0));
    assert_eq!(value(&text, "chatfleet_turn_fleet_overhead_seconds_count"), Some(3.0));
    // Every upstream stream of a finished turn was closed: none orphaned.
    assert_eq!(value(&text, "chatfleet_worker_upstream_streams_open"), Some(0.0));
    assert_eq!(value(&text, "chatfleet_turn_tokens_sum"), Some(90.0), "30 tokens per turn");
    assert_eq!(value(&text, "chatfleet_worker_capacity"), Some(app.settings.worker.max_concurrent_turns as f64));
    // The elected exporter publishes every partition's queue, empty now.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let text = scrape(port_a).await;
        let lags: Vec<_> = (0..app.settings.redis.partitions)
            .map(|p| value(&text, &format!(r#"chatfleet_queue_lag{{partition="{p}"}}"#)))
            .collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "queue gauges missing: {lags:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A takeover: kill A mid-turn; B reclaims exactly one turn.
    let (turn, _) = c.send_and_ack(&uid("m"), "[[silent-ms=60000]] taken over").await;
    c.until(|e| matches!(e.body, EventBody::TurnStarted { .. })).await;
    a.signal(Signal::SIGKILL);
    let (b, port_b) = WorkerProc::spawn_with_metrics(&app.settings);
    c.until(|e| e.body.turn_id() == turn && matches!(e.body, EventBody::TurnStarted { attempt: 2, .. })).await;
    let text = scrape(port_b).await;
    assert_eq!(value(&text, "chatfleet_worker_reclaims_total"), Some(1.0), "{text}");
    let ready = reqwest::get(format!("http://127.0.0.1:{port_b}/readyz")).await.unwrap();
    assert_eq!((ready.status().as_u16(), ready.text().await.unwrap()), (200, "ready".to_string()));
    // `turn_started` is written inside start_turn, just before the worker counts the turn.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while value(&scrape(port_b).await, "chatfleet_worker_active_turns") != Some(1.0) {
        assert!(tokio::time::Instant::now() < deadline, "the reclaimed turn never counted as active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
}

#[tokio::test]
async fn the_workers_turn_span_joins_the_gateways_trace() {
    // A subscriber for this test's thread only; the current-thread runtime runs the gateway and
    // the worker on this thread, so their spans reach the in-memory exporter.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "trace me").await;
    c.until_end(&turn).await;
    // The worker's span closes just after the turn's last event: wait for it to be exported.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let (enqueue, run) = loop {
        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().unwrap();
        let enqueue = spans.iter().find(|s| s.name == "enqueue_turn").cloned();
        let run = spans.iter().find(|s| s.name == "turn").cloned();
        if let (Some(e), Some(r)) = (enqueue, run) {
            break (e, r);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans missing: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(run.span_context.trace_id(), enqueue.span_context.trace_id(), "one trace across the queue");
    assert_eq!(run.parent_span_id, enqueue.span_context.span_id(), "the turn is a child of its enqueue");
}

/// Every `# TYPE` line of a scrape has its `# HELP` line; returns the names without one.
fn without_help(text: &str) -> Vec<String> {
    let helped: std::collections::HashSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|n| !helped.contains(n))
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn a_fresh_worker_shows_every_series_with_help_and_at_zero_before_any_turn() {
    let app = TestApp::with(test_settings(), 0, 0).await;
    let (_w, port) = WorkerProc::spawn_with_metrics(&app.settings);
    let text = scrape(port).await;
    assert_eq!(without_help(&text), Vec::<String>::new(), "{text}");
    let version = env!("CARGO_PKG_VERSION");
    for (series, want) in [
        (format!(r#"chatfleet_build_info{{version="{version}",role="worker"}}"#), 1.0),
        ("chatfleet_worker_reclaims_total".into(), 0.0),
        ("chatfleet_worker_dead_letters_total".into(), 0.0),
        (r#"chatfleet_turns_total{outcome="error"}"#.into(), 0.0),
        (r#"chatfleet_upstream_fallbacks_total{upstream="demo"}"#.into(), 0.0),
        (r#"chatfleet_upstream_requests_total{upstream="demo",outcome="upstream_failed"}"#.into(), 0.0),
        (r#"chatfleet_upstream_timeouts_total{upstream="demo",kind="upstream_first_token_timeout"}"#.into(), 0.0),
        (r#"chatfleet_upstream_usage_estimated_total{upstream="demo"}"#.into(), 0.0),
        ("chatfleet_worker_active_turns".into(), 0.0),
        (r#"chatfleet_guard_redactions_total{kind="card"}"#.into(), 0.0),
        (r#"chatfleet_guard_moderation_flagged_total{stage="output"}"#.into(), 0.0),
        (r#"chatfleet_guard_moderation_errors_total{stage="input"}"#.into(), 0.0),
    ] {
        assert_eq!(value(&text, &series), Some(want), "{series} in:\n{text}");
    }
    assert!(text.contains("# HELP chatfleet_worker_reclaims_total Turns taken over"), "{text}");
}

#[tokio::test]
async fn a_fresh_gateway_shows_auth_failures_and_connections_at_zero_with_help() {
    let app = TestApp::with(test_settings(), 0, 0).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _gw = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatfleet"))
        .arg("gateway")
        .envs(env_for(&app.settings))
        .env("CHATFLEET__METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env("CHATFLEET__GATEWAY__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway starts");
    let text = scrape(port).await;
    assert_eq!(without_help(&text), Vec::<String>::new(), "{text}");
    for series in [
        r#"chatfleet_gateway_auth_failures_total{reason="invalid"}"#,
        r#"chatfleet_gateway_auth_failures_total{reason="expired"}"#,
        r#"chatfleet_gateway_connections{transport="sse"}"#,
        r#"chatfleet_gateway_rejected_total{code="quota_exceeded"}"#,
        "chatfleet_gateway_degraded_total",
    ] {
        assert_eq!(value(&text, series), Some(0.0), "{series} in:\n{text}");
    }
    let version = env!("CARGO_PKG_VERSION");
    let info = format!(r#"chatfleet_build_info{{version="{version}",role="gateway"}}"#);
    assert_eq!(value(&text, &info), Some(1.0), "{text}");
}

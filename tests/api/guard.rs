//! Output guardrails end to end: real Redis, a real gateway and worker, an upstream that is a
//! real HTTP server speaking OpenAI's stream format, and a moderation endpoint that is a real
//! HTTP server speaking OpenAI's `/v1/moderations` format.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chatfleet::guard::GuardOverride;
use chatfleet::protocol::{ControlMsg, Event, EventBody};
use chatfleet::settings::{Settings, TenantSettings};
use serde_json::{json, Value};

use crate::fake_llm::*;
use crate::helpers::*;

/// What the moderation server does with a request.
#[derive(Clone, Copy)]
enum Mode {
    /// Flags inputs containing this word (category `violence`).
    Flag(&'static str),
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct Moderation {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Moderation {
    async fn start(mode: Mode) -> Self {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = axum::Router::new()
            .route("/v1/moderations", axum::routing::post(moderate))
            .with_state((mode, seen.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    /// The `input` of every request, in arrival order.
    fn inputs(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|b| b["input"].as_str().unwrap().to_string()).collect()
    }
}

async fn moderate(State((mode, seen)): State<(Mode, Arc<Mutex<Vec<Value>>>)>, Json(body): Json<Value>) -> Json<Value> {
    seen.lock().unwrap().push(body.clone());
    let Mode::Flag(word) = mode else { std::future::pending().await };
    let flagged = body["input"].as_str().is_some_and(|t| t.contains(word));
    Json(json!({
        "id": "modr-1", "model": body["model"],
        "results": [{
            "flagged": flagged,
            "categories": {"violence": flagged, "hate": false},
            "category_scores": {"violence": if flagged { 0.97 } else { 0.01 }, "hate": 0.0}
        }]
    }))
}

/// Test settings answering from `fake` (OpenAI format), with no retries.
fn settings_for(fake: &Fake) -> Settings {
    let mut s = test_settings();
    let up = json!({"kind": "openai", "base_url": fake.base_v1(), "model": "gpt-test", "api_key": "sk-test"});
    s.upstreams = [("oa".to_string(), serde_json::from_value(up).unwrap())].into();
    s.routing.default = vec!["oa".into()];
    s.worker.upstream_retries = 0;
    s
}

fn with_moderation(mut s: Settings, m: &Moderation) -> Settings {
    s.guard.moderation = true;
    s.guard.moderation_url = m.url.clone();
    s
}

async fn spawn(s: Settings) -> TestApp {
    s.validate().expect("test settings are valid");
    TestApp::spawn_with(s).await
}

fn ending(events: &[Event]) -> (String, String) {
    match &events.last().unwrap().body {
        EventBody::Error { code, message, .. } => (code.clone(), message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn deltas(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Delta { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// A series' value in this process's metrics (shared by the tests of this binary, so only a
/// lower bound says something).
fn counter(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics.render();
    let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in {text}"));
    line[series.len()..].trim().parse().unwrap()
}

async fn stored_answer(app: &TestApp, sid: &str) -> (String, Option<String>) {
    let h = app.history(sid).await;
    let a = h.iter().rev().find(|m| m.role == "assistant").expect("an assistant message");
    (a.text.clone(), a.status.clone())
}

#[tokio::test]
async fn an_email_and_a_phone_split_across_deltas_reach_clients_storage_and_resumes_only_as_markers() {
    let hits = HitLog::default();
    let tokens = ["Write to ", "jane.d", "oe@exa", "mple.", "com", " or call +1 555 ", "123 4", "567", " today."];
    let fake = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&tokens, (5, 9)), 3))).await;
    let mut s = settings_for(&fake);
    // Off globally, on for this tenant: the per-tenant override is what turns it on.
    let tenant = s.gateway.tenant.clone();
    let guard = GuardOverride { redact: Some(true), ..Default::default() };
    s.tenants.insert(tenant, TenantSettings { guard: Some(guard), ..Default::default() });
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "how do I reach Jane?").await;
    let events = c.until_end(&turn).await;
    let expected = "Write to [redacted:email] or call [redacted:phone] today.";
    assert_eq!(text_of(&events, &turn), expected);
    for d in deltas(&events) {
        for raw in ["jane", "oe@", "exa", "555", "123", "567"] {
            assert!(!d.contains(raw), "a delta leaked {raw:?}: {d:?}");
        }
    }
    assert_eq!(stored_answer(&app, &sid).await, (expected.to_string(), Some("done".to_string())));
    // A resume replays the stored deltas; a snapshot carries the stored message.
    let mut again = Client::connect(app.gateways[0], &sid, Some(c.epoch()), Some(0)).await;
    let replayed = again.until_end(&turn).await;
    assert_eq!(text_of(&replayed, &turn), expected);
    let fresh = Client::connect(app.gateways[0], &sid, None, None).await;
    let Some(ControlMsg::Snapshot { messages, .. }) = &fresh.snapshot else { panic!("no snapshot") };
    assert_eq!(messages.last().unwrap().text, expected);
    assert!(counter(&app, r#"chatfleet_guard_redactions_total{kind="email"}"#) >= 1.0);
    assert!(counter(&app, r#"chatfleet_guard_redactions_total{kind="phone"}"#) >= 1.0);
}

#[tokio::test]
async fn a_stopped_turn_redacts_the_held_match_and_keeps_the_held_safe_text() {
    let hits = HitLog::default();
    let tokens = ["Mail ", "bob@example.co", " or hel"];
    let chunks = events(&openai_partial(&tokens), 3);
    let fake = Fake::start("oa", &hits, vec![], Reply::Stream { chunks, then_stall: true }).await;
    let mut s = settings_for(&fake);
    s.guard.redact = true;
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "mail?").await;
    // "hel" is held (it could still become an address) while the model stalls.
    while !text_of(&c.events(), &turn).ends_with(" or ") {
        c.until(|e| matches!(&e.body, EventBody::Delta { .. })).await;
    }
    assert_eq!(text_of(&c.events(), &turn), "Mail [redacted:email] or ");
    c.cancel(&turn).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }), "{events:?}");
    let expected = "Mail [redacted:email] or hel";
    assert_eq!(text_of(&c.events(), &turn), expected);
    assert_eq!(stored_answer(&app, &sid).await, (expected.to_string(), Some("cancelled".to_string())));
}

#[tokio::test]
async fn a_flagged_answer_phrase_cuts_the_turn_and_keeps_the_text_generated_before_the_verdict() {
    let hits = HitLog::default();
    let tokens = ["Fine sentence one. ", "The FORBIDDEN ", "sentence."];
    // The model stalls after the flagged sentence: the cut must not wait for it.
    let chunks = events(&openai_partial(&tokens), 5);
    let fake = Fake::start("oa", &hits, vec![], Reply::Stream { chunks, then_stall: true }).await;
    let m = Moderation::start(Mode::Flag("FORBIDDEN")).await;
    let app = spawn(with_moderation(settings_for(&fake), &m)).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "tell me a story").await;
    let events = c.until_end(&turn).await;
    let (code, message) = ending(&events);
    assert_eq!(code, "content_filter");
    assert_eq!(message, "the answer was cut by moderation (violence)");
    let kept = "Fine sentence one. The FORBIDDEN sentence.";
    assert_eq!(text_of(&events, &turn), kept);
    assert_eq!(stored_answer(&app, &sid).await, (kept.to_string(), Some("error".to_string())));
    fake.wait_for(Duration::from_secs(5), "the cut closing the model's stream", |s| s.disconnects == 1).await;
    let mut inputs = m.inputs();
    inputs.sort();
    assert_eq!(inputs, [" The FORBIDDEN sentence.", "Fine sentence one.", "tell me a story"]);
    assert_eq!(m.seen.lock().unwrap()[0]["model"], "omni-moderation-latest");
}

#[tokio::test]
async fn a_flagged_user_message_ends_the_turn_before_the_model_is_called() {
    let hits = HitLog::default();
    let fake = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["never"], (1, 1)), 1))).await;
    let m = Moderation::start(Mode::Flag("FORBIDDEN")).await;
    let app = spawn(with_moderation(settings_for(&fake), &m)).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "something FORBIDDEN please").await;
    let events = c.until_end(&turn).await;
    assert_eq!(ending(&events), ("content_filter".into(), "the message was flagged by moderation (violence)".into()));
    assert!(deltas(&events).is_empty(), "{events:?}");
    assert!(fake.bodies().is_empty(), "the model was called");
    // No text, so no assistant message; the session log keeps why the turn ended.
    assert!(app.history(&sid).await.iter().all(|m| m.role == "user"));
    let mut again = Client::connect(app.gateways[0], &sid, Some(c.epoch()), Some(0)).await;
    assert_eq!(ending(&again.until_end(&turn).await).0, "content_filter");
}

#[tokio::test]
async fn a_moderation_endpoint_that_times_out_is_passed_when_fail_open_and_ends_the_turn_when_not() {
    let hits = HitLog::default();
    let tokens = ["All ", "good. ", "Really."];
    let fake = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&tokens, (3, 3)), 2))).await;
    let m = Moderation::start(Mode::Hang).await;
    let mut s = with_moderation(settings_for(&fake), &m);
    s.guard.moderation_timeout_ms = 200;
    let app = spawn(s.clone()).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "hi").await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }), "{events:?}");
    assert_eq!(text_of(&events, &turn), tokens.concat());
    assert_eq!(fake.bodies().len(), 1);
    assert!(counter(&app, r#"chatfleet_guard_moderation_errors_total{stage="input"}"#) >= 1.0);
    drop(app);

    // Fail closed: the turn ends at once, and the model is not called.
    s.guard.moderation_fail_open = false;
    s.redis.key_prefix = format!("{}b", s.redis.key_prefix);
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "hi").await;
    let events = c.until_end(&turn).await;
    assert_eq!(ending(&events).0, "moderation_unavailable");
    assert_eq!(fake.bodies().len(), 1, "no second model call");
}

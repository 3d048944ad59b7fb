//! Real model upstreams, end to end: the app on port 0 with a real Redis, talking to fake
//! providers that are real HTTP servers speaking each provider's exact wire format.

use std::collections::HashMap;
use std::time::Duration;

use chatfleet::protocol::{ControlMsg, Event, EventBody, ServerMsg};
use chatfleet::settings::Settings;
use chatfleet::upstream::settings::UpstreamSettings;
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface};
use serde_json::{json, Value};

use crate::fake_llm::*;
use crate::helpers::*;

const KEY: &str = "sk-test-SECRET-0123456789";

pub(crate) fn upstream(kind: &str, base: String, model: &str, extra: Value) -> UpstreamSettings {
    let mut v = json!({"kind": kind, "base_url": base, "model": model, "api_key": KEY});
    for (k, x) in extra.as_object().cloned().unwrap_or_default() {
        v[k] = x;
    }
    serde_json::from_value(v).unwrap()
}

pub(crate) fn openai(f: &Fake, model: &str, extra: Value) -> UpstreamSettings {
    upstream("openai", f.base_v1(), model, extra)
}

fn anthropic(f: &Fake, model: &str, extra: Value) -> UpstreamSettings {
    upstream("anthropic", f.base(), model, extra)
}

/// Test settings with these upstreams, `default` as the default chain, and no retries.
pub(crate) fn with_upstreams(ups: Vec<(&str, UpstreamSettings)>, default: &[&str]) -> Settings {
    let mut s = test_settings();
    s.upstreams = ups.into_iter().map(|(n, u)| (n.to_string(), u)).collect();
    s.routing.default = default.iter().map(|d| d.to_string()).collect();
    s.worker.upstream_retries = 0;
    s
}

pub(crate) async fn spawn(s: Settings) -> TestApp {
    s.validate().expect("test settings are valid");
    TestApp::spawn_with(s).await
}

fn rule(model: &str, chain: &[&str]) -> chatfleet::upstream::settings::RouteRule {
    chatfleet::upstream::settings::RouteRule {
        model: Some(model.into()),
        chain: chain.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

/// Sends with an explicit `model` and waits for the ack; returns the turn id.
async fn send_model(c: &mut Client, text: &str, model: Option<&str>) -> String {
    let cmid = uid("m");
    let mut frame = json!({"type": "send", "client_msg_id": cmid, "text": text});
    if let Some(m) = model {
        frame["model"] = json!(m);
    }
    c.send_raw(frame.to_string()).await;
    loop {
        if let ServerMsg::Control(ControlMsg::Ack { turn_id, client_msg_id, .. }) = c.next().await {
            assert_eq!(client_msg_id, cmid);
            return turn_id;
        }
    }
}

fn error_code(events: &[Event]) -> String {
    match &events.last().unwrap().body {
        EventBody::Error { code, .. } => code.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn tool_states(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ToolStatus { name, state, .. } => Some((name.clone(), state.clone())),
            _ => None,
        })
        .collect()
}

pub(crate) async fn turn_hash(app: &TestApp, sid: &str, turn: &str) -> HashMap<String, String> {
    let raw = app.raw().await;
    raw.hgetall(format!("{}:turn:{turn}", app.session_keys(sid).base)).await.unwrap()
}

#[tokio::test]
async fn an_openai_stream_cut_inside_utf8_characters_arrives_whole_with_its_usage() {
    let hits = HitLog::default();
    let tokens = ["日本", "語 ", "🚀 ", "café ", "naïve ", "—ok"];
    // 5-byte chunks: boundaries fall inside multi-byte characters and inside SSE lines.
    let fake = Fake::start("oa", &hits, vec![], stream(rechunk(&openai_text(&tokens, (11, 6)), 5, 1))).await;
    let mut s = with_upstreams(vec![("oa", openai(&fake, "gpt-4o-mini", json!({})))], &["oa"]);
    s.context.system_prompt = "Be kind.".into();
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "say something in many scripts").await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), tokens.concat());
    let EventBody::Done { usage, .. } = &events.last().unwrap().body else { panic!("{:?}", events.last()) };
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 6), "usage from the include_usage chunk");
    let body = &fake.bodies()[0];
    assert_eq!((body["stream"].clone(), body["stream_options"]["include_usage"].clone()), (json!(true), json!(true)));
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "Be kind."}));
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "say something in many scripts"}));
    let auth = fake.seen(|s| s.headers[0]["authorization"].to_str().unwrap().to_string());
    assert_eq!(auth, format!("Bearer {KEY}"));
}

#[tokio::test]
async fn an_anthropic_stream_cut_inside_utf8_characters_arrives_whole_with_its_usage() {
    let hits = HitLog::default();
    let tokens = ["Grüße ", "aus ", "東京 ", "🚀", "!"];
    let fake = Fake::start("an", &hits, vec![], stream(rechunk(&anthropic_text(&tokens, (25, 9)), 7, 1))).await;
    let mut s = with_upstreams(vec![("an", anthropic(&fake, "claude-test", json!({})))], &["an"]);
    s.context.system_prompt = "Be kind.".into();
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "greet me").await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), tokens.concat());
    let EventBody::Done { usage, .. } = &events.last().unwrap().body else { panic!("{:?}", events.last()) };
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (25, 9));
    let body = &fake.bodies()[0];
    assert_eq!(body["system"], "Be kind.");
    assert_eq!(body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "greet me"}]}]));
    let (key, version) = fake
        .seen(|s| (s.headers[0]["x-api-key"].to_str().unwrap().to_string(), s.headers[0]["anthropic-version"].clone()));
    assert_eq!((key.as_str(), version.to_str().unwrap()), (KEY, "2023-06-01"));
}

#[tokio::test]
async fn errors_mid_stream_of_both_providers_end_the_turn_with_upstream_failed_and_keep_the_text() {
    let hits = HitLog::default();
    let mut oa_events = openai_partial(&["partial ", "answer"]);
    oa_events.push(openai_error_event("the GPU fell over"));
    let oa = Fake::start("oa", &hits, vec![], stream(events(&oa_events, 5))).await;
    let mut an_events = anthropic_partial(&["half ", "said"], 5);
    an_events.push(anthropic_error_event("overloaded_error", "Overloaded"));
    let an = Fake::start("an", &hits, vec![], stream(events(&an_events, 5))).await;
    let mut s = with_upstreams(
        vec![("oa", openai(&oa, "gpt-4o", json!({}))), ("an", anthropic(&an, "claude", json!({})))],
        &["oa"],
    );
    s.routing.rules.push(rule("claude", &["an"]));
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    for (model, text) in [(None, "partial answer"), (Some("claude"), "half said")] {
        let turn = send_model(&mut c, "go", model).await;
        let events = c.until_end(&turn).await;
        assert_eq!(error_code(&events), "upstream_failed", "{model:?}");
        assert_eq!(text_of(&events, &turn), text);
        let EventBody::Error { message, .. } = &events.last().unwrap().body else { unreachable!() };
        assert!(
            !message.contains("GPU") && !message.contains("Overloaded"),
            "upstream internals stay in the log: {message}"
        );
    }
    let hist = app.history(&sid).await;
    assert_eq!((hist[1].text.as_str(), hist[1].status.as_deref()), ("partial answer", Some("error")));
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_401_is_not_retried() {
    let hits = HitLog::default();
    let limited =
        error(429, vec![("retry-after", "1".into())], json!({"error": {"message": "slow down", "type": "rate_limit"}}));
    let rl =
        Fake::start("rl", &hits, vec![limited], stream(events(&openai_text(&["after ", "waiting"], (3, 2)), 0))).await;
    let refused = error(401, vec![], json!({"error": {"message": "bad key", "type": "invalid_request_error"}}));
    let bad = Fake::start("bad", &hits, vec![], refused).await;
    let mut s =
        with_upstreams(vec![("rl", openai(&rl, "m", json!({}))), ("bad", openai(&bad, "m", json!({})))], &["rl"]);
    s.routing.rules.push(rule("bad", &["bad"]));
    s.worker.upstream_retries = 2;
    s.worker.upstream_retry_base_ms = 10;
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let started = std::time::Instant::now();
    let turn = send_model(&mut c, "hi", None).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }), "{:?}", events.last());
    assert_eq!(text_of(&events, &turn), "after waiting");
    assert!(started.elapsed() >= Duration::from_secs(1), "the retry waited for retry-after: {:?}", started.elapsed());
    assert_eq!(rl.bodies().len(), 2);

    let turn = send_model(&mut c, "hi", Some("bad")).await;
    let events = c.until_end(&turn).await;
    assert_eq!(error_code(&events), "upstream_rejected");
    assert_eq!(bad.bodies().len(), 1, "a refused request is not retried");
}

/// A listener whose accept queue is full, so new connections hang in the handshake (Linux drops
/// their SYNs). Keep the returned value alive for the listener to stay full.
async fn full_listener() -> (std::net::SocketAddr, Vec<tokio::net::TcpStream>, tokio::net::TcpListener) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fill.push(s),
            _ => return (addr, fill, listener),
        }
    }
    panic!("the accept queue never filled up");
}

#[tokio::test]
async fn every_upstream_timeout_ends_the_turn_with_its_own_error_code_never_a_hang() {
    let hits = HitLog::default();
    let (full, _fill, _listener) = full_listener().await;
    let role_only = Reply::Stream { chunks: events(&openai_partial(&[]), 0), then_stall: true };
    let first = Fake::start("first", &hits, vec![], role_only).await;
    let no_headers = Fake::start("headers", &hits, vec![], Reply::Hang).await;
    let two_then_silence = Reply::Stream { chunks: events(&openai_partial(&["one ", "two "]), 0), then_stall: true };
    let idle = Fake::start("idle", &hits, vec![], two_then_silence).await;
    let many: Vec<String> = (0..200).map(|i| format!("t{i} ")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let total = Fake::start("total", &hits, vec![], stream(events(&openai_text(&refs, (1, 1)), 30))).await;
    let t = |extra: Value| extra;
    let mut s = with_upstreams(
        vec![
            ("connect", upstream("openai", format!("http://{full}/v1"), "m", t(json!({"connect_timeout_ms": 300})))),
            ("first", openai(&first, "m", json!({"first_token_timeout_ms": 400}))),
            ("headers", openai(&no_headers, "m", json!({"first_token_timeout_ms": 400}))),
            ("idle", openai(&idle, "m", json!({"idle_timeout_ms": 400}))),
            ("total", openai(&total, "m", json!({"total_timeout_ms": 800, "idle_timeout_ms": 5000}))),
        ],
        &["first"],
    );
    for name in ["connect", "first", "headers", "idle", "total"] {
        s.routing.rules.push(rule(name, &[name]));
    }
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    for (model, code, text) in [
        ("connect", "upstream_connect_timeout", ""),
        ("first", "upstream_first_token_timeout", ""),
        ("headers", "upstream_first_token_timeout", ""),
        ("idle", "upstream_idle_timeout", "one two "),
        ("total", "upstream_total_timeout", ""),
    ] {
        let started = std::time::Instant::now();
        let turn = send_model(&mut c, "hello", Some(model)).await;
        let events = c.until_end(&turn).await;
        assert_eq!(error_code(&events), code, "{model}");
        if !text.is_empty() {
            assert_eq!(text_of(&events, &turn), text);
        } else if model == "total" {
            assert!(text_of(&events, &turn).starts_with("t0 t1 "), "tokens flowed until the total limit");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{model} took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_stop_closes_the_upstream_connection() {
    let hits = HitLog::default();
    let many: Vec<String> = (0..400).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let fake = Fake::start("slow", &hits, vec![], stream(events(&openai_text(&refs, (1, 1)), 50))).await;
    let app = spawn(with_upstreams(vec![("slow", openai(&fake, "m", json!({})))], &["slow"])).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "talk slowly").await;
    c.until(|e| matches!(e.body, EventBody::Delta { .. })).await;
    c.cancel(&turn).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
    // The answer had 20 s to go: only a closed connection ends the server's response now.
    fake.wait_for(Duration::from_secs(5), "the client disconnect", |s| s.disconnects == 1).await;
    assert_eq!(fake.seen(|s| s.completed), 0);
}

/// The audit rides on the round's next write. An answer with no text has no delta, so the
/// turn's end must record who answered.
#[tokio::test]
async fn an_empty_answer_still_records_who_answered() {
    let hits = HitLog::default();
    let f = Fake::start("f", &hits, vec![], stream(events(&openai_text(&[], (3, 0)), 0))).await;
    let mut s = with_upstreams(vec![("f", openai(&f, "model-f", json!({})))], &["f"]);
    s.context.template_version = "tmpl-e".into();
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let turn = send_model(&mut c, "say nothing", None).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }), "{events:?}");
    assert_eq!(text_of(&events, &turn), "");
    let h = turn_hash(&app, &sid, &turn).await;
    assert_eq!((h["upstream"].as_str(), h["model"].as_str(), h["template"].as_str()), ("f", "model-f", "tmpl-e"));
}

#[tokio::test]
async fn the_fallback_chain_is_tried_in_order_and_the_turn_records_who_answered() {
    let hits = HitLog::default();
    let a = Fake::start("a", &hits, vec![], error(503, vec![], json!({"error": {"message": "down"}}))).await;
    let b = Fake::start("b", &hits, vec![], error(429, vec![], json!({"error": {"message": "busy"}}))).await;
    let c3 = Fake::start("c", &hits, vec![], stream(events(&openai_text(&["from ", "c"], (2, 2)), 0))).await;
    let d = Fake::start("d", &hits, vec![], stream(events(&anthropic_text(&["from ", "d"], (2, 2)), 0))).await;
    let e = Fake::start("e", &hits, vec![], stream(events(&openai_text(&["from ", "e"], (2, 2)), 0))).await;
    let mut s = with_upstreams(
        vec![
            ("a", openai(&a, "model-a", json!({}))),
            ("b", openai(&b, "model-b", json!({}))),
            ("c", openai(&c3, "model-c", json!({}))),
            ("d", anthropic(&d, "model-d", json!({}))),
            ("e", openai(&e, "model-e", json!({}))),
        ],
        &["a", "b", "c"],
    );
    s.context.template_version = "tmpl-7".into();
    s.routing.rules.push(chatfleet::upstream::settings::RouteRule {
        flag: Some("beta".into()),
        chain: vec!["d".into()],
        ..Default::default()
    });
    s.routing.rules.push(chatfleet::upstream::settings::RouteRule {
        min_message_chars: Some(50),
        chain: vec!["e".into()],
        ..Default::default()
    });
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let turn = send_model(&mut c, "short", None).await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), "from c");
    assert_eq!(*hits.lock().unwrap(), ["a", "b", "c"]);
    let h = turn_hash(&app, &sid, &turn).await;
    assert_eq!((h["upstream"].as_str(), h["model"].as_str(), h["template"].as_str()), ("c", "model-c", "tmpl-7"));

    let turn = send_model(&mut c, &"long ".repeat(12), None).await;
    c.until_end(&turn).await;
    assert_eq!(turn_hash(&app, &sid, &turn).await["upstream"], "e", "the message length rule");

    let raw = app.raw().await;
    let _: i64 = raw.sadd(format!("{}:flags", app.session_keys(&sid).base), "beta").await.unwrap();
    let turn = send_model(&mut c, "short again", None).await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), "from d");
    let h = turn_hash(&app, &sid, &turn).await;
    assert_eq!((h["upstream"].as_str(), h["model"].as_str()), ("d", "model-d"), "the session flag rule");
    assert_eq!(*hits.lock().unwrap(), ["a", "b", "c", "e", "d"]);
}

/// Tokens of an OpenAI request's messages as the packer counts them (o200k, 4 per message + 3).
fn request_tokens(body: &Value) -> u64 {
    let bpe = tiktoken_rs::o200k_base_singleton();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| bpe.encode_ordinary(m["content"].as_str().unwrap_or("")).len() as u64 + 4)
        .sum::<u64>()
        + 3
}

fn user_texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_long_history_is_packed_under_the_budget_dropping_the_oldest_first() {
    let hits = HitLog::default();
    let fake =
        Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["noted ", "and ", "answered."], (1, 1)), 0)))
            .await;
    let mut s = with_upstreams(
        vec![("oa", openai(&fake, "gpt-4o-mini", json!({"context_tokens": 700, "max_output_tokens": 200})))],
        &["oa"],
    );
    s.context.system_prompt = "You are terse.".into();
    s.session.max_message_bytes = 300;
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let filler = "the quick brown fox jumps over the lazy dog ".repeat(4);
    for i in 0..20 {
        let (turn, _) = c.send_and_ack(&uid("m"), &format!("turn {i}: {filler}")).await;
        c.until_end(&turn).await;
    }
    let bodies = fake.bodies();
    let last = bodies.last().unwrap();
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs[0], json!({"role": "system", "content": "You are terse."}));
    assert_eq!(msgs.last().unwrap()["content"], format!("turn 19: {filler}"));
    let tokens = request_tokens(last);
    assert!(tokens <= 500, "{tokens} tokens sent for a budget of 500");
    // The oldest turns were dropped, and what was kept is the newest contiguous run.
    let users = user_texts(last);
    let first_kept: usize = users[0]["turn ".len()..].split(':').next().unwrap().parse().unwrap();
    assert!(first_kept > 0, "nothing was dropped");
    let expected: Vec<String> = (first_kept..20).map(|i| format!("turn {i}: {filler}")).collect();
    assert_eq!(users, expected);
    assert_eq!(msgs[1]["role"], "user", "the kept history starts with a user message");
    // Early turns fit whole.
    assert_eq!(user_texts(&bodies[2]).len(), 3);
}

#[tokio::test]
async fn older_history_is_summarised_in_the_background_and_replaces_it() {
    let hits = HitLog::default();
    let main = Fake::start("main", &hits, vec![], stream(events(&openai_text(&["fine."], (1, 1)), 0))).await;
    // The summary call is slow: 1.5 s before its first token.
    let mut slow = events(&openai_text(&["SUMMARY-TEXT"], (1, 1)), 0);
    slow[0].delay_ms = 1500;
    let sum = Fake::start("sum", &hits, vec![], stream(slow)).await;
    let mut s =
        with_upstreams(vec![("main", openai(&main, "m", json!({}))), ("sum", openai(&sum, "s", json!({})))], &["main"]);
    s.context.summarize_after_turns = 2;
    s.context.keep_recent_turns = 1;
    s.context.summary_upstream = "sum".into();
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    for i in 1..=3 {
        let (turn, _) = c.send_and_ack(&uid("m"), &format!("message {i}")).await;
        c.until_end(&turn).await;
    }
    // Turn 3 ended with 3 unsummarised turns: the summary of turns 1-2 is being written. The next
    // turn does not wait for it.
    sum.wait_for(Duration::from_secs(5), "the summary request", |s| s.bodies.len() == 1).await;
    let started = std::time::Instant::now();
    let (turn, _) = c.send_and_ack(&uid("m"), "message 4").await;
    c.until_end(&turn).await;
    assert!(started.elapsed() < Duration::from_millis(1000), "turn 4 waited for the summary: {:?}", started.elapsed());
    assert_eq!(sum.seen(|s| s.completed), 0, "the summary call was still running during turn 4");
    let summary_req = &sum.bodies()[0];
    let texts: Vec<String> = summary_req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert!(texts.contains(&"message 1".to_string()) && texts.contains(&"message 2".to_string()), "{texts:?}");
    assert!(!texts.contains(&"message 3".to_string()), "the newest turn stays verbatim");

    let raw = app.raw().await;
    let key = format!("{}:summary", app.session_keys(&sid).base);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let text: Option<String> = raw.hget(&key, "text").await.unwrap();
        if text.as_deref() == Some("SUMMARY-TEXT") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no summary stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (turn, _) = c.send_and_ack(&uid("m"), "message 5").await;
    c.until_end(&turn).await;
    let last = main.bodies().last().unwrap().clone();
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(msgs[0]["content"], "Summary of the earlier conversation:\nSUMMARY-TEXT");
    let users = user_texts(&last);
    assert_eq!(users, ["message 3", "message 4", "message 5"], "summarised turns are left out");
    let ttl: i64 = raw.ttl(&key).await.unwrap();
    assert!(ttl > 0, "the summary expires with the session");
}

/// Settings with one HTTP tool `lookup` at the fake `tool` server, with a time limit.
fn with_http_tool(s: &mut Settings, tool: &Fake, timeout_ms: u64) {
    let def = json!({
        "kind": "http",
        "url": format!("http://{}/tool", tool.addr),
        "description": "Looks a word up",
        "parameters": r#"{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}"#,
        "timeout_ms": timeout_ms,
    });
    s.tools.declared.insert("lookup".into(), serde_json::from_value(def).unwrap());
}

#[tokio::test]
async fn a_tool_round_trip_through_the_websocket_with_fragmented_calls() {
    let hits = HitLog::default();
    let call =
        stream(rechunk(&openai_tool_call("call_42", "calculator", &["{\"expr", "ession\": \"6", " * 7\"}"]), 9, 1));
    let fake =
        Fake::start("oa", &hits, vec![call], stream(events(&openai_text(&["It ", "is ", "42."], (30, 3)), 0))).await;
    let mut s = with_upstreams(vec![("oa", openai(&fake, "gpt-4o", json!({})))], &["oa"]);
    s.tools.declared.insert("calculator".into(), serde_json::from_value(json!({"kind": "calculator"})).unwrap());
    let app = spawn(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "what is six times seven?").await;
    let events = c.until_end(&turn).await;
    assert_eq!(tool_states(&events), [("calculator".into(), "running".into()), ("calculator".into(), "done".into())]);
    assert_eq!(text_of(&events, &turn), "It is 42.");
    let bodies = fake.bodies();
    assert_eq!(bodies[0]["tools"][0]["function"]["name"], "calculator");
    let msgs = bodies[1]["messages"].as_array().unwrap();
    let n = msgs.len();
    assert_eq!(msgs[n - 2]["tool_calls"][0]["id"], "call_42");
    assert_eq!(msgs[n - 2]["tool_calls"][0]["function"]["arguments"], r#"{"expression": "6 * 7"}"#);
    assert_eq!(msgs[n - 1], json!({"role": "tool", "tool_call_id": "call_42", "content": "42"}));
    // The call's record is in the session, for an attempt that would take the turn over.
    let raw = app.raw().await;
    let records: Vec<bytes::Bytes> =
        raw.hvals(format!("{}:turn:{turn}:tools", app.session_keys(&sid).base)).await.unwrap();
    let r = chatfleet::payload::decode_tool_record(&records[0]).unwrap();
    assert_eq!((r.name.as_str(), r.state.as_str(), r.result.as_str()), ("calculator", "done", "42"));
}

#[tokio::test]
async fn an_anthropic_tool_call_assembled_from_input_json_deltas_runs_and_its_result_goes_back() {
    let hits = HitLog::default();
    let call = stream(events(&anthropic_tool_call("toolu_1", "lookup", &["{\"q\": ", "\"sm", "örgåsbord\"}"]), 1));
    let fake =
        Fake::start("an", &hits, vec![call], stream(events(&anthropic_text(&["Found ", "it."], (40, 2)), 0))).await;
    let tool = Fake::start(
        "tool",
        &hits,
        vec![],
        stream(vec![Chunk { delay_ms: 0, bytes: br#"{"meaning":"buffet"}"#.to_vec() }]),
    )
    .await;
    let mut s = with_upstreams(vec![("an", anthropic(&fake, "claude", json!({})))], &["an"]);
    with_http_tool(&mut s, &tool, 2000);
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "look up smörgåsbord").await;
    let events = c.until_end(&turn).await;
    assert_eq!(tool_states(&events), [("lookup".into(), "running".into()), ("lookup".into(), "done".into())]);
    assert_eq!(text_of(&events, &turn), "Found it.");
    assert_eq!(tool.bodies()[0], json!({"q": "smörgåsbord"}), "the tool got the assembled argument object");
    let second = &fake.bodies()[1];
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(
        msgs[1]["content"][0],
        json!({"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "smörgåsbord"}})
    );
    assert_eq!(
        msgs[2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": r#"{"meaning":"buffet"}"#})
    );
    let EventBody::Done { usage, .. } = &events.last().unwrap().body else { panic!() };
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (60, 14), "both rounds are counted");
}

#[tokio::test]
async fn a_tool_past_its_time_limit_is_reported_and_the_model_is_told() {
    let hits = HitLog::default();
    let call = stream(events(&openai_tool_call("call_1", "lookup", &[r#"{"q":"x"}"#]), 0));
    let fake = Fake::start("oa", &hits, vec![call], stream(events(&openai_text(&["Sorry."], (1, 1)), 0))).await;
    let tool = Fake::start("tool", &hits, vec![], Reply::Hang).await;
    let mut s = with_upstreams(vec![("oa", openai(&fake, "m", json!({})))], &["oa"]);
    with_http_tool(&mut s, &tool, 300);
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "look it up").await;
    let events = c.until_end(&turn).await;
    assert_eq!(tool_states(&events), [("lookup".into(), "running".into()), ("lookup".into(), "timed_out".into())]);
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }));
    let told =
        fake.bodies()[1]["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(told.contains("did not finish within 300 ms"), "{told}");
    tool.wait_for(Duration::from_secs(5), "the abandoned tool request closing", |s| s.disconnects == 1).await;
}

#[tokio::test]
async fn a_cancel_while_a_tool_runs_stops_the_tool_and_the_turn() {
    let hits = HitLog::default();
    let call = stream(events(&openai_tool_call("call_1", "lookup", &[r#"{"q":"x"}"#]), 0));
    let fake = Fake::start("oa", &hits, vec![call], stream(events(&openai_text(&["never"], (1, 1)), 0))).await;
    let tool = Fake::start("tool", &hits, vec![], Reply::Hang).await;
    let mut s = with_upstreams(vec![("oa", openai(&fake, "m", json!({})))], &["oa"]);
    with_http_tool(&mut s, &tool, 60_000);
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "look it up").await;
    c.until(|e| matches!(&e.body, EventBody::ToolStatus { state, .. } if state == "running")).await;
    tool.wait_for(Duration::from_secs(5), "the tool request", |s| s.bodies.len() == 1).await;
    c.cancel(&turn).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }), "{:?}", events.last());
    tool.wait_for(Duration::from_secs(5), "the tool request closing", |s| s.disconnects == 1).await;
    assert_eq!(fake.bodies().len(), 1, "the model was not asked again");
}

#[tokio::test]
async fn an_attempt_that_takes_a_turn_over_reuses_what_an_earlier_attempt_recorded() {
    let hits = HitLog::default();
    let call = stream(events(&openai_tool_call("call_9", "lookup", &[r#"{"q": "y"}"#]), 0));
    let fake = Fake::start("oa", &hits, vec![call], stream(events(&openai_text(&["Done."], (1, 1)), 0))).await;
    let tool = Fake::start("tool", &hits, vec![], Reply::Hang).await;
    let mut s = with_upstreams(vec![("oa", openai(&fake, "m", json!({})))], &["oa"]);
    with_http_tool(&mut s, &tool, 60_000);
    s.validate().unwrap();
    // No worker yet: the turn waits in the queue while we play the earlier attempt's record.
    let app = TestApp::with(s, 1, 0).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "look y up").await;
    let record = chatfleet::payload::ToolRecord {
        v: 1,
        round: 0,
        name: "lookup".into(),
        args: r#"{"q":"y"}"#.into(),
        state: "done".into(),
        result: "recorded result".into(),
    };
    let raw = app.raw().await;
    let tools_key = format!("{}:turn:{turn}:tools", app.session_keys(&sid).base);
    let _: i64 = raw
        .hset(
            &tools_key,
            ("0\nlookup\n{\"q\":\"y\"}", bytes::Bytes::from(chatfleet::payload::encode_tool_record(&record))),
        )
        .await
        .unwrap();
    let model = chatfleet::app::build_model(&app.settings);
    let stop = tokio_util::sync::CancellationToken::new();
    let w =
        chatfleet::worker::Worker::start(app.settings.clone(), app.store.clone(), model, stop.clone()).await.unwrap();
    let events = c.until_end(&turn).await;
    assert_eq!(tool_states(&events), [("lookup".into(), "done".into())], "not run again");
    assert_eq!(tool.bodies().len(), 0);
    let told = fake.bodies()[1]["messages"].as_array().unwrap().last().unwrap()["content"].clone();
    assert_eq!(told, "recorded result");
    stop.cancel();
    w.wait().await;
}

#[test]
fn api_keys_never_show_in_debug_output_of_the_settings() {
    let s: UpstreamSettings =
        serde_json::from_value(json!({"kind": "openai", "base_url": "http://x/v1", "model": "m", "api_key": KEY}))
            .unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains(KEY), "{shown}");
}

#[test]
fn the_readme_examples_are_valid_settings() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Real models").unwrap()..];
    let section = &section[..section[3..].find("\n## ").unwrap()];
    let blocks: Vec<&str> = section.split("```toml\n").skip(1).map(|b| &b[..b.find("```").unwrap()]).collect();
    assert_eq!(blocks.len(), 2);
    for toml in blocks {
        let file = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
        // Validation checks that a key variable is set; the test does not touch the environment.
        let toml = toml.replace(r#"api_key_env = "ANTHROPIC_API_KEY""#, r#"api_key = "sk-ant-test""#);
        std::fs::write(file.path(), &toml).unwrap();
        let s = Settings::load(Some(file.path())).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert!(!s.routing.default.is_empty());
    }
}

#[tokio::test]
async fn an_upstream_that_sends_no_usage_is_billed_with_tokens_counted_by_its_tokenizer() {
    use chatfleet::model::{ChatMessage, Role};
    use chatfleet::upstream::tokens::{Counter, REPLY_OVERHEAD};
    // llama.cpp's server streams like this: text chunks, a finish chunk, [DONE], and no usage.
    let mut no_usage = openai_text(&["Hello ", "from ", "llama"], (0, 0));
    let usage_chunk = no_usage.remove(no_usage.len() - 2);
    assert!(usage_chunk.contains("\"usage\""), "{usage_chunk}");
    let hits = HitLog::default();
    let llama = Fake::start("llama", &hits, vec![], stream(events(&no_usage, 0))).await;
    let s = with_upstreams(vec![("llama", openai(&llama, "gpt-4o", json!({})))], &["llama"]);
    let counter = Counter::for_upstream(&s.upstreams["llama"], &s.context);
    let app = spawn(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let turn = send_model(&mut c, "hi there", None).await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), "Hello from llama");
    let bodies = llama.bodies();
    assert_eq!(bodies[0]["messages"].as_array().map(Vec::len), Some(1), "{}", bodies[0]);
    let prompt = counter.count_message(&ChatMessage::new(Role::User, "hi there")) + REPLY_OVERHEAD;
    let completion: u64 = ["Hello ", "from ", "llama"].iter().map(|t| counter.count_text(t)).sum();
    assert!(completion >= 3, "a real tokenizer count, not zero: {completion}");
    match &events.last().unwrap().body {
        EventBody::Done { usage, .. } => {
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (prompt, completion), "{usage:?}")
        }
        other => panic!("the turn did not end with done: {other:?}"),
    }
}

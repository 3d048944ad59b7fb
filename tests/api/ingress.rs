//! The OpenAI Chat Completions and AI SDK UI message stream ingresses, on the wire: exact chunk
//! shapes, `[DONE]`, the usage chunk, error objects and statuses, what reaches the upstream, and
//! cancel on close. (The real client packages drive the same routes in tests/clients/.)

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::fake_llm::*;
use crate::helpers::*;

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(FRAME_TIMEOUT).build().unwrap()
}

/// The SSE events of a response, as data strings, one at a time.
struct Events(std::pin::Pin<Box<dyn futures::Stream<Item = String> + Send>>);

impl Events {
    fn of(resp: reqwest::Response) -> Self {
        let s = resp.bytes_stream().eventsource().map(|e| e.expect("a well-formed SSE event").data);
        Self(Box::pin(s))
    }

    async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(FRAME_TIMEOUT, self.0.next()).await.expect("an event in time")
    }

    async fn rest(mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = self.next().await {
            out.push(d);
        }
        out
    }
}

async fn chat(app: &TestApp, body: Value, session: Option<&str>) -> reqwest::Response {
    let mut req = http().post(format!("{}/v1/chat/completions", app.http(0))).json(&body);
    if let Some(s) = session {
        req = req.header("x-chatfleet-session", s);
    }
    req.send().await.unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// Waits until the stored history of `session` has an assistant message, and returns it.
async fn stored_answer(app: &TestApp, session: &str) -> chatfleet::payload::HistoryMessage {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        if let Some(m) = app.history(session).await.into_iter().find(|m| m.role == "assistant") {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer stored for {session}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_streamed_answer_is_exact_openai_chunks_with_usage_and_done_and_equals_the_whole_answer() {
    let app = TestApp::spawn().await;
    let prompt = "stream me an answer";
    let body = json!({"model": "demo", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": prompt}]});
    let resp = chat(&app, body, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let session = resp.headers()["x-chatfleet-session"].to_str().unwrap().to_string();
    let turn = resp.headers()["x-chatfleet-turn"].to_str().unwrap().to_string();
    assert!(resp.headers().contains_key("x-chatfleet-epoch") && resp.headers().contains_key("x-chatfleet-seq"));
    let data = Events::of(resp).rest().await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    for c in &chunks {
        assert_eq!(keys(c), ["choices", "created", "id", "model", "object", "system_fingerprint", "usage"], "{c}");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], format!("chatcmpl-{turn}"));
        assert_eq!(c["model"], "demo");
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
    );
    let (usage, body) = chunks.split_last().unwrap();
    let (finish, texts) = body.split_last().unwrap();
    assert_eq!(finish["choices"], json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]));
    assert_eq!(finish["usage"], Value::Null);
    assert_eq!(usage["choices"], json!([]));
    let n = app.settings.model.demo.max_tokens as u64;
    assert_eq!(usage["usage"]["completion_tokens"], n);
    let prompt_tokens = usage["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["usage"]["total_tokens"], prompt_tokens + n);
    let text: String = texts[1..].iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap()).collect();
    assert_eq!(text, app.expected_answer(prompt));
    assert_eq!(stored_answer(&app, &session).await.text, text, "the stored answer is the streamed one");

    // Not streamed: one chat.completion with the same text; no usage chunk without asking.
    let resp = chat(&app, json!({"messages": [{"role": "user", "content": prompt}]}), None).await;
    assert_eq!(resp.status(), 200);
    let c: Value = resp.json().await.unwrap();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"], json!({"role": "assistant", "content": text, "refusal": null}));
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(c["usage"]["completion_tokens"], n);
    // A conversation longer than the v1 frame limit fits the ingress's own body limit.
    let long = "x".repeat(app.settings.gateway.max_frame_bytes + 1);
    let body = json!({"messages": [{"role": "system", "content": long}, {"role": "user", "content": prompt}]});
    assert_eq!(chat(&app, body, None).await.status(), 200);
    let resp = chat(&app, json!({"stream": true, "messages": [{"role": "user", "content": prompt}]}), None).await;
    let data = Events::of(resp).rest().await;
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert!(first.get("usage").is_none(), "no usage field without include_usage: {first}");
}

#[tokio::test]
async fn max_tokens_ends_with_length_and_the_request_context_and_options_reach_the_upstream() {
    let hits = HitLog::default();
    let fallback = stream(events(&openai_text(&["Hi", " there"], (11, 2)), 0));
    let fake = Fake::start("up", &hits, vec![], fallback).await;
    let mut s = test_settings();
    let up = json!({"kind": "openai", "base_url": fake.base_v1(), "model": "m", "api_key": "k"});
    s.upstreams = [("up".to_string(), serde_json::from_value(up).unwrap())].into_iter().collect();
    s.routing.default = vec!["up".into()];
    s.context.system_prompt = "house rules".into();
    let app = TestApp::spawn_with(s).await;
    let body = json!({"model": "m", "max_tokens": 2, "temperature": 0.3, "user": "end-user-7", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}]});
    let resp = chat(&app, body.clone(), None).await;
    let c: Value = resp.json().await.unwrap();
    assert_eq!(c["choices"][0]["message"]["content"], "Hi there");
    assert_eq!(c["choices"][0]["finish_reason"], "length", "2 tokens of max_tokens 2");
    assert_eq!(c["usage"], json!({"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}));
    let sent = fake.bodies().pop().unwrap();
    let roles: Vec<(String, String)> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().into(), m["content"].as_str().unwrap().into()))
        .collect();
    let want = [("system", "house rules"), ("system", "be brief"), ("user", "q1"), ("assistant", "a1"), ("user", "q2")];
    assert_eq!(roles, want.map(|(r, t)| (r.to_string(), t.to_string())));
    assert_eq!(
        (sent["max_tokens"].clone(), sent["temperature"].clone(), sent["user"].clone()),
        (json!(2), json!(0.3), json!("end-user-7"))
    );

    // With a session header the session's stored history is the context: the earlier turns of
    // the request are not sent again, its system message is.
    let session = uid("s");
    let first = json!({"messages": [{"role": "user", "content": "first"}]});
    assert_eq!(chat(&app, first, Some(&session)).await.status(), 200);
    let second = json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ignored"},
        {"role": "assistant", "content": "ignored"}, {"role": "user", "content": "second"}]});
    assert_eq!(chat(&app, second, Some(&session)).await.status(), 200);
    let sent = fake.bodies().pop().unwrap();
    let texts: Vec<&str> =
        sent["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(texts, ["house rules", "be brief", "first", "Hi there", "second"]);
    assert_eq!(app.history(&session).await.len(), 4);
}

async fn openai_error(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(keys(&body["error"]), ["code", "message", "param", "type"], "{body}");
    (status, body["error"].clone())
}

#[tokio::test]
async fn refusals_are_openai_error_objects_with_their_status() {
    let mut s = jwt_settings();
    s.gateway.limits.http_requests_per_sec = 1;
    s.gateway.limits.burst = 2;
    let app = TestApp::spawn_with(s).await;
    let url = format!("{}/v1/chat/completions", app.http(0));
    let ok = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (status, e) = openai_error(http().post(&url).json(&ok).send().await.unwrap()).await;
    assert_eq!((status, e["type"].as_str().unwrap()), (401, "authentication_error"));
    let bad = http().post(&url).bearer_auth(token("acme", "u1", 600, None)).header("content-type", "application/json");
    let (status, e) = openai_error(bad.body("{broken").send().await.unwrap()).await;
    assert_eq!(
        (status, e["type"].as_str().unwrap(), e["code"].as_str().unwrap()),
        (400, "invalid_request_error", "bad_request")
    );
    // A token restricted to other sessions may not name this one.
    let narrow = token("acme", "u2", 600, Some(&["mine"]));
    let req = http().post(&url).bearer_auth(&narrow).header("x-chatfleet-session", "theirs").json(&ok);
    let (status, e) = openai_error(req.send().await.unwrap()).await;
    assert_eq!((status, e["type"].as_str().unwrap()), (403, "permission_error"));
    // More requests of u1 at once than its burst of 2 (at 1/s): some are refused with 429 and
    // Retry-After. (Broken bodies, so that each is answered at once: the rate counts requests.)
    let t = token("acme", "u1", 600, None);
    let burst =
        (0..4).map(|_| http().post(&url).bearer_auth(&t).header("content-type", "application/json").body("{").send());
    let mut answers = futures::future::join_all(burst).await.into_iter().map(Result::unwrap).collect::<Vec<_>>();
    let refused = answers.iter().position(|r| r.status() == 429).expect("a request over the burst is refused");
    let resp = answers.swap_remove(refused);
    assert!(resp.headers().contains_key("retry-after"));
    let (status, e) = openai_error(resp).await;
    assert_eq!(
        (status, e["type"].as_str().unwrap(), e["code"].as_str().unwrap()),
        (429, "rate_limit_error", "rate_limited")
    );
    // /v1/models takes the same authentication.
    let (status, _) = openai_error(http().get(format!("{}/v1/models", app.http(0))).send().await.unwrap()).await;
    assert_eq!(status, 401);
    let models: Value = http()
        .get(format!("{}/v1/models", app.http(0)))
        .bearer_auth(token("acme", "u3", 600, None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], app.settings.routing.default[0]);
}

#[tokio::test]
async fn an_upstream_timeout_before_the_answer_is_a_504_streamed_or_not() {
    let hits = HitLog::default();
    let fake = Fake::start("slow", &hits, vec![], Reply::Hang).await;
    let mut s = test_settings();
    let up = json!({"kind": "openai", "base_url": fake.base_v1(), "model": "m", "api_key": "k", "first_token_timeout_ms": 300});
    s.upstreams = [("slow".to_string(), serde_json::from_value(up).unwrap())].into_iter().collect();
    s.routing.default = vec!["slow".into()];
    s.worker.upstream_retries = 0;
    let app = TestApp::spawn_with(s).await;
    for stream in [false, true] {
        let resp = chat(&app, json!({"stream": stream, "messages": [{"role": "user", "content": "hi"}]}), None).await;
        let (status, e) = openai_error(resp).await;
        assert_eq!((status, e["code"].as_str().unwrap()), (504, "upstream_first_token_timeout"), "stream: {stream}");
    }
}

#[tokio::test]
async fn closing_the_stream_cancels_the_turn_unless_the_setting_is_off() {
    for cancel in [true, false] {
        let mut s = test_settings();
        s.model.demo.tokens_per_sec = 20;
        s.gateway.ingress.openai_cancel_on_close = cancel;
        let app = TestApp::spawn_with(s).await;
        let session = uid("s");
        let resp =
            chat(&app, json!({"stream": true, "messages": [{"role": "user", "content": "go"}]}), Some(&session)).await;
        let mut ev = Events::of(resp);
        ev.next().await.expect("the role chunk");
        ev.next().await.expect("the first text");
        drop(ev);
        let answer = stored_answer(&app, &session).await;
        let want = if cancel { "cancelled" } else { "done" };
        assert_eq!(answer.status.as_deref(), Some(want), "cancel_on_close = {cancel}");
        if cancel {
            assert!(answer.text.len() < app.expected_answer("go").len());
            // The session is free at once for the next request.
            let next = chat(&app, json!({"messages": [{"role": "user", "content": "again"}]}), Some(&session)).await;
            assert_eq!(next.status(), 200);
        }
    }
    // A non-streamed request whose client gives up is cancelled too.
    let mut s = test_settings();
    s.model.demo.tokens_per_sec = 20;
    let app = TestApp::spawn_with(s).await;
    let session = uid("s");
    let client = reqwest::Client::builder().timeout(Duration::from_millis(400)).build().unwrap();
    let req = client
        .post(format!("{}/v1/chat/completions", app.http(0)))
        .header("x-chatfleet-session", &session)
        .json(&json!({"messages": [{"role": "user", "content": "go"}]}));
    assert!(req.send().await.unwrap_err().is_timeout());
    assert_eq!(stored_answer(&app, &session).await.status.as_deref(), Some("cancelled"));
}

async fn aisdk_post(app: &TestApp, chat_id: &str, msg_id: &str, text: &str) -> reqwest::Response {
    let body = json!({"id": chat_id, "trigger": "submit-message", "messageId": null,
        "messages": [{"id": msg_id, "role": "user", "parts": [{"type": "text", "text": text}]}]});
    http().post(format!("{}/v1/aisdk/chat", app.http(0))).json(&body).send().await.unwrap()
}

fn deltas(parts: &[Value]) -> String {
    parts.iter().filter(|p| p["type"] == "text-delta").map(|p| p["delta"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_ui_message_stream_has_its_parts_and_resume_replays_the_running_answer_or_is_204() {
    let mut s = test_settings();
    s.model.demo.tokens_per_sec = 40;
    let app = TestApp::spawn_with(s).await;
    let chat_id = uid("c");
    let resp = aisdk_post(&app, &chat_id, "m1", "first question").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let turn = resp.headers()["x-chatfleet-turn"].to_str().unwrap().to_string();
    let data = Events::of(resp).rest().await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let parts: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types[..2], ["start", "text-start"]);
    assert_eq!(types[types.len() - 2..], ["text-end", "finish"]);
    assert!(types[2..types.len() - 2].iter().all(|t| *t == "text-delta"), "{types:?}");
    assert_eq!(parts[0], json!({"type": "start", "messageId": turn}));
    assert_eq!(deltas(&parts), app.expected_answer("first question"));
    // Nothing runs now.
    let url = format!("{}/v1/aisdk/chat/{chat_id}/stream", app.http(0));
    assert_eq!(http().get(&url).send().await.unwrap().status(), 204);

    // A reload mid-answer: the POST stream is gone, the resume replays the answer from its start.
    let resp = aisdk_post(&app, &chat_id, "m2", "second question").await;
    let mut ev = Events::of(resp);
    while !ev.next().await.unwrap().contains("text-delta") {}
    drop(ev);
    let resp = http().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let data = Events::of(resp).rest().await;
    let parts: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(parts.last().unwrap()["type"], "finish");
    assert_eq!(deltas(&parts), app.expected_answer("second question"));
    assert_eq!(stored_answer(&app, &chat_id).await.text, app.expected_answer("first question"));
    let stored: Vec<_> = app.history(&chat_id).await.into_iter().filter(|m| m.role == "assistant").collect();
    assert_eq!(stored[1].text, app.expected_answer("second question"));
    assert_eq!(stored[1].status.as_deref(), Some("done"), "closing the POST stream did not stop the turn");
}

/// The ingress request follows its turn without an open of its own: the send counts it as
/// watching the session. With the cancel-on-disconnect policy, an answer longer than the grace
/// period must therefore finish while the request reads it, and stop once the request is gone.
#[tokio::test]
async fn an_ingress_request_counts_as_watching_its_session_until_it_goes() {
    let mut s = test_settings();
    s.session.on_disconnect = chatfleet::settings::OnDisconnect::Cancel;
    s.session.disconnect_grace_ms = 200;
    s.model.demo.max_tokens = 120;
    s.model.demo.tokens_per_sec = 150;
    let app = TestApp::spawn_with(s).await;
    let chat_id = uid("c");
    // A WebSocket client was here and left: the session is marked as watched by nobody, which
    // only a counted follower clears.
    drop(app.client(0, &chat_id).await);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let meta = format!("{}:meta", app.session_keys(&chat_id).base);
    while !fred::interfaces::HashesInterface::hexists::<bool, _, _>(&app.raw().await, &meta, "detached").await.unwrap()
    {
        assert!(tokio::time::Instant::now() < deadline, "the WebSocket client was never detached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = aisdk_post(&app, &chat_id, "m1", "a long answer, read to the end").await;
    let data = Events::of(resp).rest().await;
    let parts: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(parts.last().unwrap()["type"], "finish", "{parts:?}");
    assert_eq!(deltas(&parts), app.expected_answer("a long answer, read to the end"));

    // The same, read for a moment and then abandoned (the AI SDK route does not cancel on
    // close): nobody watches, so the policy stops the turn after the grace period.
    let resp = aisdk_post(&app, &chat_id, "m2", "an abandoned answer").await;
    let mut ev = Events::of(resp);
    while !ev.next().await.unwrap().contains("text-delta") {}
    drop(ev);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let status = loop {
        let hist = app.history(&chat_id).await;
        if let Some(m) = hist.iter().filter(|m| m.role == "assistant").nth(1) {
            break m.status.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the abandoned turn did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn a_worker_tool_call_is_a_dynamic_tool_part_between_the_texts() {
    let hits = HitLog::default();
    let call = stream(events(&openai_tool_call("call_42", "calculator", &[r#"{"expression": "6 * 7"}"#]), 0));
    let fake =
        Fake::start("oa", &hits, vec![call], stream(events(&openai_text(&["It ", "is ", "42."], (30, 3)), 0))).await;
    let mut s = test_settings();
    let up = json!({"kind": "openai", "base_url": fake.base_v1(), "model": "m", "api_key": "k"});
    s.upstreams = [("oa".to_string(), serde_json::from_value(up).unwrap())].into_iter().collect();
    s.routing.default = vec!["oa".into()];
    s.tools.declared.insert("calculator".into(), serde_json::from_value(json!({"kind": "calculator"})).unwrap());
    let app = TestApp::spawn_with(s).await;
    let chat_id = uid("c");
    let data = Events::of(aisdk_post(&app, &chat_id, "m1", "six times seven?").await).rest().await;
    let parts: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types[..3], ["start", "tool-input-available", "tool-output-available"], "{types:?}");
    assert_eq!(parts[1]["toolName"], "calculator");
    assert_eq!(parts[1]["dynamic"], true);
    assert_eq!(parts[1]["toolCallId"], parts[2]["toolCallId"]);
    assert_eq!(types[types.len() - 2..], ["text-end", "finish"]);
    assert_eq!(deltas(&parts), "It is 42.");
}

#[tokio::test]
async fn a_long_queue_is_a_503_with_retry_after() {
    let mut s = test_settings();
    s.redis.partitions = 1;
    s.gateway.admission.max_waiting_turns = 2;
    s.gateway.admission.refresh_ms = 100;
    s.gateway.admission.max_retry_ms = 9000;
    // No workers: turns wait.
    let app = TestApp::with(s, 1, 0).await;
    for _ in 0..3 {
        let url = format!("{}/v1/sessions/{}/messages", app.http(0), uid("s"));
        let r = http().post(url).json(&json!({"client_msg_id": "m1", "text": "queued"})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A request admitted before the gateway saw the queue waits for its answer: give up on it.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let resp = loop {
        let body = json!({"stream": true, "messages": [{"role": "user", "content": "one more"}]});
        match impatient.post(format!("{}/v1/chat/completions", app.http(0))).json(&body).send().await {
            Ok(r) => break r,
            Err(e) => assert!(e.is_timeout() && tokio::time::Instant::now() < deadline, "never degraded: {e}"),
        }
    };
    assert_eq!(resp.headers()["retry-after"], "9");
    let (status, e) = openai_error(resp).await;
    assert_eq!((status, e["type"].as_str().unwrap(), e["code"].as_str().unwrap()), (503, "server_error", "degraded"));
}

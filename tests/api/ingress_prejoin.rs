//! Stateless OpenAI requests take new sessions whose channels the gateway joined ahead
//! (`gateway.ingress.prejoined_per_tenant`), and those memberships survive the pub/sub
//! connection being killed: the answer of a request that takes one arrives whole, live and
//! stored.

use std::collections::HashSet;
use std::time::Duration;

use chatfleet::local_redis::LocalRedis;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// The session ids of the stateless sessions whose channels someone subscribes to.
async fn joined_stateless(raw: &fred::clients::Client) -> HashSet<String> {
    use fred::interfaces::ClientLike;
    let channels: Vec<String> =
        raw.custom(fred::cmd!("PUBSUB"), vec!["SHARDCHANNELS", "*:oai-*"]).await.expect("PUBSUB SHARDCHANNELS");
    channels.iter().filter_map(|c| c.strip_suffix(":ch")?.rsplit(':').next().map(String::from)).collect()
}

/// Polls until `ready` holds for the joined stateless sessions; returns them.
async fn until_joined(raw: &fred::clients::Client, ready: impl Fn(&HashSet<String>) -> bool) -> HashSet<String> {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let joined = joined_stateless(raw).await;
        if ready(&joined) {
            return joined;
        }
        assert!(tokio::time::Instant::now() < deadline, "joined stateless sessions stayed {joined:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()[name].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_request_takes_a_prejoined_session_that_outlived_a_pubsub_kill() {
    let redis = LocalRedis::start(&[]).await.expect("redis-server starts");
    let mut s = test_settings();
    s.gateway.ingress.prejoined_per_tenant = 3;
    let app = TestApp::with_url(s, redis.url(), 1, 1).await;
    let raw = app.raw().await;
    let http = reqwest::Client::builder().timeout(FRAME_TIMEOUT).build().unwrap();
    let url = format!("{}/v1/chat/completions", app.http(0));

    // The first request finds no pool (it joins its own channel) and starts one.
    let first = http.post(&url).json(&json!({"messages": [{"role": "user", "content": "one"}]})).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first_session = header(&first, "x-chatfleet-session");
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], app.expected_answer("one"));
    let pooled = until_joined(&raw, |j| j.iter().filter(|s| **s != first_session).count() == 3).await;
    let pooled: HashSet<String> = pooled.into_iter().filter(|s| *s != first_session).collect();

    // The pub/sub connection goes; the gateway resubscribes every member, pooled ones included.
    use fred::interfaces::ClientLike;
    let killed: i64 = raw.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"]).await.unwrap();
    assert!(killed >= 1, "a pub/sub connection was killed");
    until_joined(&raw, |j| pooled.is_subset(j)).await;

    let prompt = "two, streamed";
    let body = json!({"stream": true, "messages": [{"role": "user", "content": prompt}]});
    let resp = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = header(&resp, "x-chatfleet-session");
    assert!(pooled.contains(&session), "{session} is not one of the pre-joined {pooled:?}");
    let mut text = String::new();
    let mut events = resp.bytes_stream().eventsource();
    loop {
        let ev = tokio::time::timeout(FRAME_TIMEOUT, events.next()).await.expect("a chunk in time");
        let data = ev.expect("the stream ends with [DONE]").unwrap().data;
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
    }
    assert_eq!(text, app.expected_answer(prompt));
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let stored = loop {
        if let Some(m) = app.history(&session).await.into_iter().find(|m| m.role == "assistant") {
            break m.text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer stored for {session}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stored, text, "the stored answer is the streamed one");
    // The take started a refill: one new session joined in place of the taken one.
    until_joined(&raw, |j| j.iter().filter(|s| !pooled.contains(*s) && **s != first_session).count() == 1).await;
}

/// Reads a streamed completion to `[DONE]`; returns its text.
async fn streamed_text(http: &reqwest::Client, url: &str, prompt: &str) -> (String, String) {
    let body = json!({"stream": true, "messages": [{"role": "user", "content": prompt}]});
    let resp = http.post(url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = header(&resp, "x-chatfleet-session");
    let mut text = String::new();
    let mut events = resp.bytes_stream().eventsource();
    loop {
        let ev = tokio::time::timeout(FRAME_TIMEOUT, events.next()).await.expect("a chunk in time");
        let data =
            ev.unwrap_or_else(|| panic!("{session}: the stream ended before [DONE], after {text:?}")).unwrap().data;
        if data == "[DONE]" {
            return (session, text);
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
    }
}

/// A model that answers at once races the request's feed: every answer on a pre-joined session
/// must still arrive whole, in order, ending with `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_answers_on_prejoined_sessions_arrive_whole() {
    let mut s = test_settings();
    s.model.demo.ttft_ms = 0;
    s.model.demo.tokens_per_sec = 0;
    s.gateway.ingress.prejoined_per_tenant = 2;
    let app = TestApp::with(s, 1, 1).await;
    let http = reqwest::Client::builder().timeout(FRAME_TIMEOUT).build().unwrap();
    let url = format!("{}/v1/chat/completions", app.http(0));
    for i in 0..30 {
        let prompt = format!("instant {i}");
        let (session, text) = streamed_text(&http, &url, &prompt).await;
        assert_eq!(text, app.expected_answer(&prompt), "{session}");
    }
}

//! Tenant quotas and rate limits across two gateways, and admission control.

use std::time::Duration;

use chatfleet::protocol::{ControlMsg, ErrorCode, ServerMsg};

use crate::helpers::*;

/// Sends on `c` and returns the ack's turn id, or the refusal's code and retry hint.
async fn try_send(c: &mut Client, cmid: &str, text: &str) -> Result<String, (ErrorCode, Option<u64>)> {
    c.send(cmid, text).await;
    loop {
        match c.next().await {
            ServerMsg::Control(ControlMsg::Ack { turn_id, client_msg_id, .. }) if client_msg_id == cmid => {
                return Ok(turn_id)
            }
            ServerMsg::Control(ControlMsg::Error { code, retry_after_ms, .. }) => return Err((code, retry_after_ms)),
            _ => {}
        }
    }
}

/// Waits, if needed, until Redis's clock is early enough in its minute for `need` to pass before
/// the per-minute window turns over (the windows are clock minutes of Redis time).
async fn early_in_the_minute(app: &TestApp, need: Duration) {
    use fred::prelude::*;
    let now: (u64, u64) = app.raw().await.custom(fred::cmd!("TIME"), Vec::<String>::new()).await.unwrap();
    let into = Duration::from_secs(now.0 % 60) + Duration::from_micros(now.1);
    if into + need > Duration::from_secs(60) {
        // Waiting for a clock boundary, not for readiness.
        tokio::time::sleep(Duration::from_secs(60) - into + Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn turns_per_minute_is_one_budget_across_two_gateways_and_other_tenants_are_unaffected() {
    let mut s = jwt_settings();
    s.quota.turns_per_minute = 3;
    let app = TestApp::with(s, 2, 1).await;
    early_in_the_minute(&app, Duration::from_secs(20)).await;
    let acme = token("acme", "u1", 600, None);
    let mut sent = 0;
    for i in 0..3 {
        let mut c = Client::connect_with_token(app.gateways[i % 2], &uid("s"), &acme, TokenVia::Query).await;
        try_send(&mut c, "m1", "hi").await.expect("within the budget");
        sent += 1;
    }
    assert_eq!(sent, 3);
    for gw in 0..2 {
        let mut c = Client::connect_with_token(app.gateways[gw], &uid("s"), &acme, TokenVia::Query).await;
        let (code, retry) = try_send(&mut c, "m1", "one too many").await.expect_err("over the budget");
        assert_eq!(code, ErrorCode::QuotaExceeded, "gateway {gw}");
        assert!(retry.is_some_and(|ms| ms > 0 && ms <= 60_000), "the hint is the rest of the minute: {retry:?}");
    }
    // The same refusal over HTTP.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/sessions/{}/messages", app.http(1), uid("s")))
        .bearer_auth(&acme)
        .json(&serde_json::json!({"client_msg_id": "m1", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(refusal(resp).await, (429, "quota_exceeded".to_string()));
    // Another tenant has its own budget.
    let globex = token("globex", "u1", 600, None);
    let mut g = Client::connect_with_token(app.gateways[1], &uid("s"), &globex, TokenVia::Query).await;
    try_send(&mut g, "m1", "hi").await.expect("globex is unaffected");
}

#[tokio::test]
async fn turns_in_flight_are_bounded_across_gateways_and_slots_free_when_turns_end() {
    let mut s = jwt_settings();
    s.quota.max_inflight_turns = 2;
    s.model.demo.tokens_per_sec = 20;
    s.model.demo.max_tokens = 20; // about one second per answer
    let app = TestApp::with(s, 2, 1).await;
    let acme = token("acme", "u1", 600, None);
    let mut a = Client::connect_with_token(app.gateways[0], &uid("s"), &acme, TokenVia::Query).await;
    let mut b = Client::connect_with_token(app.gateways[1], &uid("s"), &acme, TokenVia::Query).await;
    let mut c = Client::connect_with_token(app.gateways[1], &uid("s"), &acme, TokenVia::Query).await;
    let ta = try_send(&mut a, "m1", "first").await.expect("slot 1");
    let tb = try_send(&mut b, "m1", "second").await.expect("slot 2");
    let (code, _) = try_send(&mut c, "m1", "third").await.expect_err("both slots are held");
    assert_eq!(code, ErrorCode::QuotaExceeded);
    // A retry of an accepted send is not a new turn: it gets its ack, not a refusal.
    assert_eq!(try_send(&mut a, "m1", "first").await, Ok(ta.clone()));
    a.until_end(&ta).await;
    // A's turn ended: its slot is found free (reconciled from the turn's status) and reused.
    try_send(&mut c, "m2", "third again").await.expect("a slot was freed by the ended turn");
    b.until_end(&tb).await;
}

#[tokio::test]
async fn frame_rates_are_per_connection_on_each_gateway_and_http_rates_per_user() {
    let mut s = jwt_settings();
    s.gateway.limits.messages_per_sec = 2;
    s.gateway.limits.burst = 3;
    s.gateway.limits.http_requests_per_sec = 1;
    let app = TestApp::with(s, 2, 1).await;
    let t = token("acme", "u1", 600, None);
    let mut flooders = Vec::new();
    for gw in 0..2 {
        let mut c = Client::connect_with_token(app.gateways[gw], &uid("s"), &t, TokenVia::Query).await;
        for _ in 0..6 {
            c.send_raw(r#"{"type":"ping"}"#.into()).await;
        }
        let mut limited = None;
        for _ in 0..6 {
            if let ServerMsg::Control(ControlMsg::Error { code, retry_after_ms, .. }) = c.next().await {
                limited = Some((code, retry_after_ms));
            }
        }
        let (code, retry) = limited.expect("the flood was limited");
        assert_eq!(code, ErrorCode::RateLimited, "gateway {gw}");
        assert!(retry.is_some_and(|ms| ms > 0 && ms <= 1000));
        flooders.push(c);
    }
    // A quiet connection of the same user is not affected by the flooders.
    let mut quiet = Client::connect_with_token(app.gateways[0], &uid("s"), &t, TokenVia::Query).await;
    quiet.send_raw(r#"{"type":"ping"}"#.into()).await;
    assert_eq!(quiet.next().await, ServerMsg::Control(ControlMsg::Pong));

    // HTTP: one user's burst is limited per gateway.
    let post = |gw: usize| {
        reqwest::Client::new()
            .post(format!("{}/v1/sessions/{}/turns/t1/cancel", app.http(gw), uid("s")))
            .bearer_auth(&t)
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(post(0).await.unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 404).count(), 3, "the burst passes: {statuses:?}");
    assert_eq!(refusal(post(0).await.unwrap()).await.1, "rate_limited");
    assert_eq!(post(1).await.unwrap().status(), 404, "the other gateway has its own bucket");
}

#[tokio::test]
async fn a_long_queue_refuses_new_sends_at_once_and_accepted_turns_keep_their_place() {
    let mut s = jwt_settings();
    s.redis.partitions = 1;
    s.gateway.admission.max_waiting_turns = 2;
    s.gateway.admission.refresh_ms = 100;
    s.gateway.admission.max_retry_ms = 9000;
    // No workers yet: turns wait.
    let app = TestApp::with(s, 2, 0).await;
    let t = token("acme", "u1", 600, None);
    let mut accepted = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect_with_token(app.gateways[i % 2], &uid("s"), &t, TokenVia::Query).await;
        let turn = try_send(&mut c, "m1", "queued").await.expect("below the threshold");
        accepted.push((c, turn));
    }
    // Once both gateways have seen the queue, a new send is refused at once, with the hint
    // bounded by the maximum (no throughput measured yet: nothing has finished).
    for gw in 0..2 {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        let (code, retry) = loop {
            // A new session each time: an admitted send would leave its session busy.
            let mut c = Client::connect_with_token(app.gateways[gw], &uid("s"), &t, TokenVia::Query).await;
            match try_send(&mut c, &uid("m"), "one more").await {
                Err(refused) => break refused,
                Ok(_) => {
                    assert!(tokio::time::Instant::now() < deadline, "never degraded");
                    // Polling: the gateway refreshes its view of the queue every 100 ms.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(code, ErrorCode::Degraded, "gateway {gw}");
        assert_eq!(retry, Some(9000));
    }
    // A worker arrives: every accepted turn runs to the end, in its place.
    let model = chatfleet::app::build_model(&app.settings);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let w = chatfleet::worker::Worker::start(app.settings.clone(), app.store.clone(), model, shutdown.clone())
        .await
        .unwrap();
    for (c, turn) in &mut accepted {
        let events = c.until_end(turn).await;
        assert!(matches!(events.last().unwrap().body, chatfleet::protocol::EventBody::Done { .. }));
    }
    // The queue drained: sends are admitted again.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let mut c = Client::connect_with_token(app.gateways[0], &uid("s"), &t, TokenVia::Query).await;
        if try_send(&mut c, &uid("m"), "admitted again").await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never admitted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    w.wait().await;
}

//! End to end: a turn from a WebSocket through Redis Streams to a worker and back.

use chatfleet::protocol::{ControlMsg, ErrorCode, EventBody, ServerMsg};

use crate::helpers::*;

#[tokio::test]
async fn a_sent_message_streams_the_demo_answer_back_in_seq_order() {
    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, user_seq) = c.send_and_ack(&uid("m"), "Hello, fleet!").await;
    assert_eq!(user_seq, c.welcome_seq() + 1);
    let events = c.until_end(&turn).await;

    assert!(matches!(events[0].body, EventBody::UserMessage { ref text, .. } if text == "Hello, fleet!"));
    assert!(matches!(events[1].body, EventBody::TurnStarted { attempt: 1, .. }));
    assert!(matches!(events.last().unwrap().body, EventBody::Done { usage, .. } if usage.completion_tokens == 30));
    assert!(events[2..events.len() - 1].iter().all(|e| matches!(e.body, EventBody::Delta { .. })));
    assert_eq!(text_of(&events, &turn), app.expected_answer("Hello, fleet!"));
    assert_contiguous(&c.events(), c.welcome_seq() + 1);

    let hist = app.history(&c.session).await;
    assert_eq!(hist.len(), 2);
    assert_eq!((hist[0].role.as_str(), hist[0].text.as_str()), ("user", "Hello, fleet!"));
    assert_eq!(hist[1].role, "assistant");
    assert_eq!(hist[1].text, app.expected_answer("Hello, fleet!"));
    assert_eq!(hist[1].status.as_deref(), Some("done"));
}

#[tokio::test]
async fn the_first_delta_carries_the_first_token_alone() {
    // The first token is emitted at once, not held for the coalescing window.
    let mut s = test_settings();
    s.worker.coalesce_ms = 200;
    s.model.demo.tokens_per_sec = 1000;
    let app = TestApp::with(s, 1, 1).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "first").await;
    let events = c.until_end(&turn).await;
    let first_delta = events.iter().find_map(|e| match &e.body {
        EventBody::Delta { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(first_delta.as_deref(), Some(chatfleet::model::demo::tokens_for("first", 30)[0].as_str()));
}

#[tokio::test]
async fn two_gateways_and_two_workers_share_one_redis() {
    let mut s = test_settings();
    // One turn at a time per worker, so queued turns must spread over both workers.
    s.worker.max_concurrent_turns = 1;
    s.model.demo.tokens_per_sec = 200;
    let app = TestApp::with(s, 2, 2).await;
    let sessions: Vec<String> = (0..6).map(|_| uid("s")).collect();
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for sid in &sessions {
        on_a.push(app.client(0, sid).await);
        on_b.push(app.client(1, sid).await);
    }
    let mut turns = Vec::new();
    for (i, c) in on_a.iter_mut().enumerate() {
        let text = format!("question {i}");
        let (turn, _) = c.send_and_ack(&uid("m"), &text).await;
        turns.push((turn, text));
    }
    for (i, (turn, text)) in turns.iter().enumerate() {
        let expected = app.expected_answer(text);
        let a = on_a[i].until_end(turn).await;
        assert_eq!(text_of(&a, turn), expected, "client on gateway A");
        let b = on_b[i].until_end(turn).await;
        assert_eq!(text_of(&b, turn), expected, "client on gateway B of the same session");
        assert_contiguous(&on_a[i].events(), on_a[i].welcome_seq() + 1);
        assert_contiguous(&on_b[i].events(), on_b[i].welcome_seq() + 1);
    }
    // Which worker ran each turn is recorded in its turn hash.
    use fred::prelude::*;
    let raw = app.raw().await;
    let mut ran_by = std::collections::HashSet::new();
    for (sid, (turn, _)) in sessions.iter().zip(&turns) {
        let key = format!("{}:turn:{}", app.session_keys(sid).base, turn);
        let w: String = raw.hget(key, "worker").await.unwrap();
        ran_by.insert(w);
    }
    let expected: std::collections::HashSet<String> = app.worker_ids.iter().cloned().collect();
    assert_eq!(ran_by, expected, "both workers ran turns");
}

#[tokio::test]
async fn a_repeated_send_returns_the_original_ack_and_creates_no_second_turn() {
    let app = TestApp::spawn().await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let cmid = uid("m");
    let (turn, seq) = c.send_and_ack(&cmid, "once").await;
    c.until_end(&turn).await;
    let (again, seq_again) = c.send_and_ack(&cmid, "once").await;
    assert_eq!((again, seq_again), (turn, seq));
    assert_eq!(app.history(&sid).await.len(), 2, "one user message, one answer");
}

#[tokio::test]
async fn a_send_while_a_turn_runs_is_refused_busy() {
    let mut s = test_settings();
    s.model.demo.ttft_ms = 2_000;
    let app = TestApp::with(s, 1, 1).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "slow one").await;
    c.send(&uid("m"), "too soon").await;
    loop {
        match c.next().await {
            ServerMsg::Control(ControlMsg::Error { code, retry_after_ms, .. }) => {
                assert_eq!(code, ErrorCode::Busy);
                assert!(retry_after_ms.is_some());
                break;
            }
            ServerMsg::Control(ControlMsg::Ack { .. }) => panic!("a second turn was accepted"),
            _ => {}
        }
    }
    c.cancel(&turn).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
}

#[tokio::test]
async fn stop_while_streaming_ends_the_turn_cancelled_and_keeps_the_partial_answer() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 400;
    s.model.demo.tokens_per_sec = 100;
    let app = TestApp::with(s, 1, 1).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "a long answer please").await;
    // Wait for some text, then stop.
    c.until(|e| matches!(e.body, EventBody::Delta { .. })).await;
    c.cancel(&turn).await;
    c.until_end(&turn).await;
    let events = c.events();
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
    let partial = text_of(&events, &turn);
    let full = app.expected_answer("a long answer please");
    assert!(!partial.is_empty() && partial.len() < full.len() && full.starts_with(&partial));
    let hist = app.history(&sid).await;
    assert_eq!(hist[1].text, partial, "history keeps exactly what the user saw");
    assert_eq!(hist[1].status.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn a_frame_that_is_not_json_gets_bad_request_and_the_connection_keeps_working() {
    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    c.send_raw("{not json".into()).await;
    match c.next().await {
        ServerMsg::Control(ControlMsg::Error { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected an error, got {other:?}"),
    }
    let (turn, _) = c.send_and_ack(&uid("m"), "still here").await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), app.expected_answer("still here"));
}

/// The TTL is refreshed at enqueue (at most once per ttl/4) and when a client opens the session,
/// not on every write; every key a turn creates must still carry one, while it streams and after,
/// on the session's first turn and on a later one that finds the TTL fresh.
#[tokio::test]
async fn every_key_of_a_session_expires_while_a_turn_streams_and_after_it() {
    let mut s = test_settings();
    s.model.demo.tokens_per_sec = 100;
    let app = TestApp::with(s, 1, 1).await;
    let mut c = app.client(0, &uid("s")).await;
    for prompt in ["keys with a lifetime", "and a second turn"] {
        let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
        // Mid-turn: the partial text key exists once a delta was emitted.
        c.until(|e| matches!(e.body, EventBody::Delta { .. }) && e.body.turn_id() == turn).await;
        let mid = app.assert_every_key_expires(&c.session).await;
        assert!(mid.iter().any(|k| k.ends_with(":partial")), "the partial text is stored: {mid:?}");
        c.until_end(&turn).await;
        let after = app.assert_every_key_expires(&c.session).await;
        assert!(after.len() >= 4, "meta, log, history, dedupe and the turn remain: {after:?}");
    }
}

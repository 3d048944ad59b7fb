//! Workers never lose a turn: chaos kills, fencing, long turns, stop, drain, retries, dead letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatfleet::ctl::{CtlCommand, DlqCommand};
use chatfleet::protocol::{ControlMsg, EventBody, ServerMsg};
use nix::sys::signal::Signal;
use rand::Rng;

use crate::helpers::*;
use crate::procs::*;

/// Fast leases so takeovers happen within a test's time.
fn fast_lease_settings() -> chatfleet::settings::Settings {
    let mut s = test_settings();
    s.worker.lease_ms = 600;
    s.worker.heartbeat_ms = 200;
    s.redis.command_timeout_ms = 400;
    s.worker.sweep_interval_ms = 100;
    s.worker.read_block_ms = 200;
    s.worker.drain_timeout_ms = 300;
    s.worker.max_attempts = 50;
    s.worker.consumer_gc_idle_ms = 1000;
    s
}

/// Terminal events per turn in a client's events.
fn terminals(events: &[chatfleet::protocol::Event]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events.iter().filter(|e| e.body.is_terminal()) {
        *out.entry(e.body.turn_id().to_string()).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn chaos_two_hundred_turns_with_workers_sigkilled_end_exactly_once_with_clean_text() {
    let mut s = fast_lease_settings();
    s.model.demo.max_tokens = 40;
    s.model.demo.tokens_per_sec = 200;
    let app = Arc::new(TestApp::with(s, 1, 0).await);
    let raw = app.raw().await;
    let stream0 = app.store.keys().stream(0);
    let mut procs = Vec::new();
    for _ in 0..3 {
        let w = WorkerProc::spawn(&app.settings);
        wait_joined(&raw, &stream0, w.pid()).await;
        procs.push(w);
    }
    // The chaos: every 150-400 ms one worker is SIGKILLed and a new one started.
    let done = tokio_util::sync::CancellationToken::new();
    let chaos = {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            let mut kills = 0;
            while !done.is_cancelled() {
                let pause = rand::rng().random_range(150..400);
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(pause)) => {}, _ = done.cancelled() => break }
                let victim = rand::rng().random_range(0..procs.len());
                procs[victim].signal(Signal::SIGKILL);
                let _ = procs[victim].child.wait().await;
                procs[victim] = WorkerProc::spawn(&app.settings);
                kills += 1;
            }
            kills
        })
    };
    const SESSIONS: usize = 20;
    const TURNS: usize = 10;
    let mut tasks = Vec::new();
    for si in 0..SESSIONS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = app.client(0, &uid("s")).await;
            let mut resets = 0;
            for ti in 0..TURNS {
                let prompt = format!("chaos {si}/{ti}");
                let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
                let events = c.until_end(&turn).await;
                resets += events.iter().filter(|e| matches!(e.body, EventBody::Reset { .. })).count();
                assert!(
                    matches!(events.last().unwrap().body, EventBody::Done { .. }),
                    "turn {si}/{ti} ended {:?}",
                    events.last()
                );
                assert_eq!(text_of(&events, &turn), app.expected_answer(&prompt), "turn {si}/{ti}");
            }
            let all = c.events();
            assert_contiguous(&all, c.welcome_seq() + 1);
            assert!(terminals(&all).values().all(|&n| n == 1), "a turn ended twice");
            assert_eq!(terminals(&all).len(), TURNS);
            resets
        }));
    }
    let mut resets = 0;
    for t in tasks {
        resets += t.await.unwrap();
    }
    done.cancel();
    let kills = chaos.await.unwrap();
    eprintln!("chaos: {kills} workers killed, {resets} turns taken over after a reset");
    assert!(kills >= 3, "the chaos really happened ({kills} kills)");
}

#[tokio::test]
async fn a_stopped_worker_that_wakes_after_its_turn_was_taken_over_writes_nothing() {
    let mut s = fast_lease_settings();
    s.model.demo.max_tokens = 60;
    s.model.demo.tokens_per_sec = 40;
    let app = TestApp::with(s, 1, 0).await;
    let raw = app.raw().await;
    let stream0 = app.store.keys().stream(0);
    let old = WorkerProc::spawn(&app.settings);
    wait_joined(&raw, &stream0, old.pid()).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let prompt = "fence me";
    let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
    let mut deltas = 0;
    while deltas < 3 {
        if let ServerMsg::Event(e) = c.next().await {
            deltas += matches!(e.body, EventBody::Delta { .. }) as usize;
        }
    }
    old.signal(Signal::SIGSTOP);
    let new = WorkerProc::spawn(&app.settings);
    // The new worker takes over once the lease expires: the client sees `reset`.
    c.until(|e| matches!(e.body, EventBody::Reset { .. })).await;
    // Wake the old worker mid-way through the new attempt: its writes must be refused.
    old.signal(Signal::SIGCONT);
    c.until_end(&turn).await;
    let events = c.events();
    assert_eq!(text_of(&events, &turn), app.expected_answer(prompt), "no text of the old attempt leaked in");
    assert_eq!(terminals(&events).get(&turn), Some(&1));
    use fred::interfaces::HashesInterface;
    let key = format!("{}:turn:{turn}", app.session_keys(&sid).base);
    let attempt: u32 = raw.hget(&key, "attempt").await.unwrap();
    assert_eq!(attempt, 2);
    let hist = app.history(&sid).await;
    assert_eq!(hist.len(), 2, "one answer in history");
    assert_eq!(hist[1].text, app.expected_answer(prompt));
    drop(new);
}

#[tokio::test]
async fn a_long_silent_turn_with_heartbeats_is_never_taken_over() {
    // A silence of 15 leases, with two workers that could take it over.
    let mut s = fast_lease_settings();
    s.worker.lease_ms = 300;
    s.worker.heartbeat_ms = 100;
    s.redis.command_timeout_ms = 200;
    let app = TestApp::with(s, 1, 2).await;
    let mut c = app.client(0, &uid("s")).await;
    let prompt = "[[silent-ms=4500]] take your time";
    let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
    let events = c.until_end(&turn).await;
    assert!(!events.iter().any(|e| matches!(e.body, EventBody::Reset { .. })), "the turn was taken over");
    assert!(events.iter().any(|e| matches!(e.body, EventBody::TurnStarted { attempt: 1, .. })));
    assert_eq!(events.iter().filter(|e| matches!(e.body, EventBody::TurnStarted { .. })).count(), 1);
    assert_eq!(text_of(&events, &turn), app.expected_answer(prompt));
}

#[tokio::test]
async fn stop_while_the_model_is_silent_ends_the_turn_without_waiting_for_the_model() {
    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "[[silent-ms=600000]] never mind").await;
    c.until(|e| matches!(e.body, EventBody::TurnStarted { .. })).await;
    c.cancel(&turn).await;
    // A ten-minute silence: only the stop can end this turn within the frame timeout.
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
    assert!(!events.iter().any(|e| matches!(e.body, EventBody::Delta { .. })));
}

#[tokio::test]
async fn a_turn_cancelled_while_queued_never_starts() {
    // No worker yet: the turn stays queued.
    let app = TestApp::with(test_settings(), 1, 0).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "queued then stopped").await;
    c.cancel(&turn).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
    // Now a worker comes: it must skip the cancelled turn, and the session is free again.
    let raw = app.raw().await;
    let w = WorkerProc::spawn(&app.settings);
    wait_joined(&raw, &app.store.keys().stream(0), w.pid()).await;
    let (turn2, _) = c.send_and_ack(&uid("m"), "next").await;
    c.until_end(&turn2).await;
    let started: Vec<_> = c.events().into_iter().filter(|e| matches!(e.body, EventBody::TurnStarted { .. })).collect();
    assert!(started.iter().all(|e| e.body.turn_id() == turn2), "the cancelled turn started: {started:?}");
    use fred::interfaces::StreamsInterface;
    let len: u64 = raw.xlen(&app.session_keys(&sid).stream).await.unwrap();
    assert_eq!(len, 0, "both entries were acked and deleted");
}

#[tokio::test]
async fn a_sigterm_drains_a_worker_and_another_finishes_its_turns() {
    let mut s = fast_lease_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 100; // two seconds per turn: longer than the drain deadline
    let app = TestApp::with(s, 1, 0).await;
    let raw = app.raw().await;
    let stream0 = app.store.keys().stream(0);
    let mut draining = WorkerProc::spawn(&app.settings);
    wait_joined(&raw, &stream0, draining.pid()).await;
    let mut clients = streaming_clients(&app, 0, 4, "drain").await;
    let pid = draining.pid();
    draining.signal(Signal::SIGTERM);
    let status = draining.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "the worker exits cleanly after draining: {status}");
    let _successor = WorkerProc::spawn(&app.settings);
    for (c, turn, prompt) in clients.iter_mut() {
        let events = c.until_end(turn).await;
        assert!(events.iter().any(|e| matches!(e.body, EventBody::Reset { .. })), "released, then rerun");
        assert_eq!(text_of(&events, turn), app.expected_answer(prompt));
        assert_eq!(terminals(&c.events()).get(turn.as_str()), Some(&1));
    }
    // The drained worker kept its consumer only where it still owned released turns; once the
    // successor took them, the sweep removes the idle consumer everywhere.
    use fred::interfaces::StreamsInterface;
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    for p in 0..app.settings.redis.partitions {
        loop {
            let consumers: Vec<HashMap<String, fred::types::Value>> =
                raw.xinfo_consumers(app.store.keys().stream(p), "workers").await.unwrap();
            let name = |c: &HashMap<String, fred::types::Value>| c.get("name").and_then(|v| v.as_string());
            if !consumers.iter().any(|c| name(c).is_some_and(|n| n.starts_with(&format!("w-{pid}-")))) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the drained consumer stays in partition {p}");
            // Polling a condition in Redis, with a deadline.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn an_upstream_that_fails_before_its_first_token_is_retried() {
    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    let prompt = format!("[[fail-once]] {}", uid("retry"));
    let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }));
    assert_eq!(text_of(&events, &turn), app.expected_answer(&prompt));
}

#[tokio::test]
async fn an_upstream_failing_mid_answer_ends_the_turn_with_error_and_keeps_the_partial_text() {
    let app = TestApp::spawn().await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let prompt = "[[fail-mid]] break";
    let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
    let events = c.until_end(&turn).await;
    let EventBody::Error { code, .. } = &events.last().unwrap().body else { panic!("{:?}", events.last()) };
    assert_eq!(code, "upstream_failed");
    let partial = text_of(&events, &turn);
    assert!(!partial.is_empty() && app.expected_answer(prompt).starts_with(&partial));
    let hist = app.history(&sid).await;
    assert_eq!((hist[1].text.as_str(), hist[1].status.as_deref()), (partial.as_str(), Some("error")));
}

#[tokio::test]
async fn a_turn_whose_upstream_always_fails_is_dead_lettered_and_ctl_replays_it() {
    let mut s = test_settings();
    s.worker.upstream_retries = 0;
    let app = TestApp::spawn_with(s).await;
    let mut c = app.client(0, &uid("s")).await;
    // Fails on the first attempt of this process, succeeds when replayed.
    let prompt = format!("[[fail-once]] {}", uid("dlq"));
    let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
    let events = c.until_end(&turn).await;
    let EventBody::Error { code, .. } = &events.last().unwrap().body else { panic!("{:?}", events.last()) };
    assert_eq!(code, "upstream_unavailable");

    let list = chatfleet::ctl::run(&app.store, CtlCommand::Dlq(DlqCommand::List { count: 10 })).await.unwrap();
    let line = list.lines().find(|l| l.contains(&turn)).unwrap_or_else(|| panic!("not in the DLQ:\n{list}"));
    assert!(line.contains("upstream_unavailable"));
    let id = line.split_whitespace().next().unwrap().to_string();
    let shown = chatfleet::ctl::run(&app.store, CtlCommand::Dlq(DlqCommand::Show { id: id.clone() })).await.unwrap();
    assert!(shown.contains(&prompt), "show includes the turn's user text:\n{shown}");

    let out = chatfleet::ctl::run(&app.store, CtlCommand::Dlq(DlqCommand::Replay { id })).await.unwrap();
    let new_turn = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_ne!(new_turn, turn);
    let events = c.until_end(&new_turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }));
    assert_eq!(text_of(&events, &new_turn), app.expected_answer(&prompt));
    let list = chatfleet::ctl::run(&app.store, CtlCommand::Dlq(DlqCommand::List { count: 10 })).await.unwrap();
    assert!(!list.contains(&turn), "a replayed dead letter leaves the DLQ");
}

#[tokio::test]
async fn ctl_cancels_a_running_turn_by_id_and_shows_it_in_status() {
    let mut s = test_settings();
    s.model.demo.ttft_ms = 60_000;
    let app = TestApp::spawn_with(s).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "operator stops this").await;
    c.until(|e| matches!(e.body, EventBody::TurnStarted { .. })).await;
    let status = chatfleet::ctl::run(&app.store, CtlCommand::Status).await.unwrap();
    assert!(status.contains(&turn) && status.contains("running"), "{status}");
    // One line per node, covering every partition.
    let nodes: u32 = status
        .lines()
        .skip_while(|l| !l.starts_with("node"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .sum();
    assert_eq!(nodes, app.settings.redis.partitions as u32, "{status}");
    // The same for scripts: one JSON document.
    let json = chatfleet::ctl::run_json(&app.store, CtlCommand::Status).await.unwrap();
    let turns = json["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1, "{json}");
    assert_eq!((turns[0]["turn_id"].as_str(), turns[0]["status"].as_str()), (Some(turn.as_str()), Some("running")));
    assert_eq!(json["partitions"].as_array().unwrap().len(), app.settings.redis.partitions as usize);
    assert_eq!((json["total"]["pending"].as_u64(), json["total"]["lag"].as_u64()), (Some(1), Some(0)), "{json}");
    let out = chatfleet::ctl::run_json(&app.store, CtlCommand::Cancel { turn_id: turn.clone() }).await.unwrap();
    assert_eq!((out["outcome"].as_str(), out["turn_id"].as_str()), (Some("stopping"), Some(turn.as_str())), "{out}");
    let events = c.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Cancelled { .. }));
}

#[tokio::test]
async fn with_the_cancel_policy_a_turn_nobody_watches_stops_after_the_grace_period() {
    let mut s = test_settings();
    s.session.on_disconnect = chatfleet::settings::OnDisconnect::Cancel;
    s.session.disconnect_grace_ms = 300;
    s.model.demo.max_tokens = 2000;
    s.model.demo.tokens_per_sec = 100;
    let app = TestApp::spawn_with(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "nobody will read this").await;
    c.until(|e| matches!(e.body, EventBody::Delta { .. })).await;
    let (epoch, last) = (c.epoch(), c.last_seq());
    drop(c);
    // Watch the session's history (not attached): the turn ends cancelled long before its
    // 20 s answer could finish.
    let url = format!("{}/v1/sessions/{sid}/events?after={}&epoch={epoch}&wait_ms=10000", app.http(0), last.unwrap());
    let mut after = last.unwrap();
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let mut ended = None;
    while ended.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the turn did not stop");
        let url = url.replace(&format!("after={}", last.unwrap()), &format!("after={after}"));
        let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        after = body["seq"].as_u64().unwrap();
        for e in body["events"].as_array().unwrap() {
            if e["turn_id"] == turn.as_str() && ["done", "cancelled", "error"].contains(&e["type"].as_str().unwrap()) {
                ended = Some(e["type"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(ended.as_deref(), Some("cancelled"));
    let hist = app.history(&sid).await;
    assert_eq!(hist[1].status.as_deref(), Some("cancelled"));
    let _ = ControlMsg::Pong;
}

#[tokio::test]
async fn a_pending_entry_whose_payload_was_deleted_is_dead_lettered_by_the_sweep() {
    use fred::interfaces::StreamsInterface;
    let app = TestApp::with(fast_lease_settings(), 1, 0).await;
    let raw = app.raw().await;
    let stream = app.store.keys().stream(1);
    let id: String = raw.xadd(&stream, false, None::<()>, "*", vec![("b", "x"), ("t", "y")]).await.unwrap();
    // Delivered to a consumer that then vanished, and its payload trimmed away.
    let _: fred::types::Value =
        raw.xreadgroup("workers", "ghost", Some(1), None, false, stream.clone(), ">").await.unwrap();
    let _: i64 = raw.xdel(&stream, &id).await.unwrap();
    let dlq = app.store.keys().dlq(1);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        // Sweep until the entry is old enough to be examined (idle ≥ one heartbeat).
        app.store.reclaim(1, "sweeper", "-").await.unwrap();
        let dead: Vec<(String, HashMap<String, String>)> = raw.xrange(&dlq, "-", "+", None).await.unwrap();
        if let Some((_, f)) = dead.first() {
            assert_eq!(f.get("reason").map(String::as_str), Some("payload_missing"));
            assert_eq!(f.get("eid"), Some(&id));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sweep never handled the entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary: Vec<fred::types::Value> = raw.xpending(&stream, "workers", ()).await.unwrap();
    assert_eq!(summary[0].as_u64(), Some(0), "the entry left the pending list");
}

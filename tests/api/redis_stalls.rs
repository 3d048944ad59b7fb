//! Redis stalling (DEBUG SLEEP: a fork, an fsync, a failover pause) and Redis coming back from an
//! older snapshot (a failover to a lagging replica, an AOF-everysec restart) while answers stream.
//! Clients keep their sockets where the gateway keeps them; every client must end with what Redis
//! holds, every turn must end once, with the exact text, live and stored.

use std::time::Duration;

use chatfleet::local_redis::LocalRedis;
use chatfleet::protocol::{ControlMsg, EventBody, ServerMsg};
use chatfleet::settings::Settings;

use crate::helpers::*;

/// What one client saw of its turn.
struct Seen {
    text: String,
    terminals: usize,
    resets: usize,
}

/// Reads `turn` to its end like a real client: redraws from a snapshot, reconnects (with backoff)
/// whenever the gateway closes the socket.
async fn follow(app: &TestApp, mut c: Client, turn: &str) -> Seen {
    let session = c.session.clone();
    let epoch = c.epoch();
    let mut events = c.events();
    let mut last = events.last().map(|e| e.seq).unwrap_or(c.welcome_seq());
    let mut resets = 0;
    loop {
        match c.next_or_close().await {
            Ok(ServerMsg::Event(e)) => {
                last = e.seq;
                resets += usize::from(matches!(&e.body, EventBody::Reset { turn_id, .. } if turn_id == turn));
                let end = e.body.turn_id() == turn && e.body.is_terminal();
                events.push(e);
                if end {
                    break;
                }
            }
            Ok(ServerMsg::Control(snap @ ControlMsg::Snapshot { .. })) => {
                if let ControlMsg::Snapshot { seq, .. } = &snap {
                    last = *seq;
                }
                if redraw(&mut events, &snap, turn) {
                    return Seen { text: text_of(&events, turn), terminals: 1, resets };
                }
            }
            Ok(_) => {}
            Err(_) => {
                let mut backoff = Duration::from_millis(20);
                let (fresh, snap) = loop {
                    if let Some(opened) = try_open(app.gateways[0], &session, &epoch, last).await {
                        break opened;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                };
                c = fresh;
                if let Some(snap) = snap {
                    if let ControlMsg::Snapshot { seq, .. } = &snap {
                        last = *seq;
                    }
                    if redraw(&mut events, &snap, turn) {
                        return Seen { text: text_of(&events, turn), terminals: 1, resets };
                    }
                }
            }
        }
    }
    let terminals = events.iter().filter(|e| e.body.turn_id() == turn && e.body.is_terminal()).count();
    Seen { text: text_of(&events, turn), terminals, resets }
}

/// Follows every client to its turn's end, then checks each answer live and stored. Returns the
/// resets the clients saw (takeovers of turns whose lease Redis judged expired).
async fn assert_every_answer_whole(app: &TestApp, clients: Vec<(Client, String, String)>) -> usize {
    let followers = clients.into_iter().map(|(c, turn, prompt)| async move {
        let session = c.session.clone();
        let seen = follow(app, c, &turn).await;
        (session, turn, prompt, seen)
    });
    let mut resets = 0;
    for (session, turn, prompt, seen) in futures::future::join_all(followers).await {
        let expected = app.expected_answer(&prompt);
        assert_eq!(seen.text, expected, "live text of {prompt}");
        assert_eq!(seen.terminals, 1, "{prompt} ended once");
        resets += seen.resets;
        // Redis may still be finishing a turn whose end it lost: wait for its one stored answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let stored = loop {
            let hist = app.history(&session).await;
            let stored: Vec<String> =
                hist.into_iter().filter(|m| m.role == "assistant" && m.turn_id == turn).map(|m| m.text).collect();
            if !stored.is_empty() {
                break stored;
            }
            assert!(tokio::time::Instant::now() < deadline, "{prompt} never ended in Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(stored, [expected], "stored answer of {prompt}");
    }
    resets
}

fn streaming_settings(s: &mut Settings) {
    s.model.demo.tokens_per_sec = 60;
    s.model.demo.max_tokens = 150;
    s.worker.sweep_interval_ms = 100;
}

/// A stall the client does not time out on resets nothing: nobody pays for an answer twice.
/// Takeovers are decided by a sweep call sent after the stall, so the writes queued during it land
/// first; settings validation also keeps the lease above the command timeout plus a heartbeat.
/// (A shorter lease, 0.5 s here, passed too: the first reason carries it.)
#[tokio::test]
async fn a_stall_shorter_than_the_command_timeout_resets_no_turn() {
    let redis = LocalRedis::start(&["--enable-debug-command", "yes"]).await.expect("redis-server starts");
    let mut s = test_settings();
    streaming_settings(&mut s);
    s.redis.command_timeout_ms = 1000;
    s.worker.heartbeat_ms = 250;
    s.worker.lease_ms = 2500;
    s.validate().expect("valid settings");
    let app = TestApp::with_url(s, redis.url(), 1, 2).await;
    let clients = streaming_clients(&app, 0, 8, "stall").await;
    // Just under the command timeout: no call fails, every one waits.
    let out = redis.cli(&["DEBUG", "SLEEP", "0.9"]).await.expect("redis-cli runs");
    assert_eq!(out.trim(), "OK", "the stall ran");
    let resets = assert_every_answer_whole(&app, clients).await;
    assert_eq!(resets, 0, "no live turn was taken over after the stall");
}

/// A stall longer than the lease and the command timeout: calls fail, leases run out, turns are
/// taken over. Each still ends once with the exact text.
#[tokio::test]
async fn a_stall_longer_than_the_lease_ends_every_turn_once_with_the_exact_text() {
    let redis = LocalRedis::start(&["--enable-debug-command", "yes"]).await.expect("redis-server starts");
    let mut s = test_settings();
    streaming_settings(&mut s);
    s.redis.command_timeout_ms = 400;
    s.worker.heartbeat_ms = 150;
    s.worker.lease_ms = 1200;
    s.worker.max_attempts = 10;
    s.validate().expect("valid settings");
    let app = TestApp::with_url(s, redis.url(), 1, 2).await;
    let clients = streaming_clients(&app, 0, 8, "long stall").await;
    let out = redis.cli(&["DEBUG", "SLEEP", "2.5"]).await.expect("redis-cli runs");
    assert_eq!(out.trim(), "OK", "the stall ran");
    assert_every_answer_whole(&app, clients).await;
}

/// Redis comes back from a snapshot taken a moment earlier: it lost the last writes (deltas, seqs,
/// maybe ends) while the epoch stayed the same. Clients that saw more than Redis holds are
/// redrawn from what it holds, workers re-send what it lost, and every turn ends.
#[tokio::test]
async fn redis_restarting_from_an_older_snapshot_leaves_every_client_with_what_redis_holds() {
    let mut redis = LocalRedis::start(&[]).await.expect("redis-server starts");
    let mut s = test_settings();
    streaming_settings(&mut s);
    s.worker.max_attempts = 10;
    let app = TestApp::with_url(s, redis.url(), 1, 2).await;
    let mut clients = streaming_clients(&app, 0, 8, "rollback").await;
    let out = redis.cli(&["SAVE"]).await.expect("redis-cli runs");
    assert_eq!(out.trim(), "OK", "the snapshot was saved");
    // More deltas reach the clients after the snapshot: those are the writes Redis will lose.
    for (c, turn, _) in clients.iter_mut() {
        let seen = c.welcome_seq();
        let at = c.events().last().map(|e| e.seq).unwrap_or(seen) + 5;
        c.until(|e| e.body.turn_id() == turn && e.seq >= at).await;
    }
    redis.restart().await.expect("redis-server restarts from its snapshot");
    assert_every_answer_whole(&app, clients).await;
}

/// A worker started before Redis (or while a Cluster is still forming) waits, reporting not
/// ready, and serves once Redis is up: it does not exit at the first refused connection.
#[tokio::test]
async fn a_worker_started_before_redis_waits_not_ready_then_serves() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut s = test_settings();
    s.redis.url = format!("redis://127.0.0.1:{port}");
    s.redis.connect_timeout_ms = 300;
    let (mut worker, metrics_port) = crate::procs::WorkerProc::spawn_with_metrics(&s);
    let readyz = format!("http://127.0.0.1:{metrics_port}/readyz");
    // The ops listener comes up first; it says "not ready" while Redis is away.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let status = loop {
        if let Ok(r) = reqwest::get(&readyz).await {
            break r.status();
        }
        assert!(tokio::time::Instant::now() < deadline, "the worker's ops listener never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker waits for Redis instead of exiting");

    let redis = LocalRedis::start_on(port, &[]).await.expect("redis-server starts on the port");
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while reqwest::get(&readyz).await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        assert!(tokio::time::Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It serves: a gateway without workers of its own gets the answer from it.
    let app = TestApp::with_url(s, redis.url(), 1, 0).await;
    let mut c = app.client(0, &uid("s")).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "after the wait").await;
    c.until_end(&turn).await;
    assert_eq!(text_of(&c.events(), &turn), app.expected_answer("after the wait"));
}

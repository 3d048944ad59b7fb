//! Faults of Redis itself, with live answers streaming: connections killed mid-call. Every
//! answer must end exactly once with the exact text, live and stored.

use std::time::Duration;

use chatfleet::local_redis::LocalRedis;
use tokio_util::sync::CancellationToken;

use chatfleet::protocol::{ControlMsg, Event, EventBody, ResumeKind, ServerMsg};

use crate::helpers::*;

/// Kills every client connection of `redis` (commands, blocking reads, pub/sub) every `every`
/// until `stop`; returns how many rounds ran.
fn kill_connections(redis: &LocalRedis, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<u32> {
    let url = redis.url();
    tokio::spawn(async move {
        use fred::prelude::*;
        let killer = Builder::from_config(Config::from_url(&url).unwrap()).build().unwrap();
        killer.init().await.unwrap();
        let mut rounds = 0;
        while !stop.is_cancelled() {
            for kind in ["normal", "pubsub"] {
                // SKIPME yes (the default) spares the killer's own connection.
                let _: Result<Value, _> = killer.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", kind]).await;
            }
            rounds += 1;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => {}
            }
        }
        rounds
    })
}

/// Opens `session` resuming after `last_seq`, as a client does after a close; `None` when the
/// gateway refused (Redis unreachable at that moment: the client retries).
async fn try_resume(addr: std::net::SocketAddr, session: &str, epoch: &str, last_seq: u64) -> Option<Client> {
    let (c, snapshot) = try_open(addr, session, epoch, last_seq).await?;
    assert!(
        snapshot.is_none() && matches!(c.welcome, ControlMsg::Welcome { resume: ResumeKind::Replay, .. }),
        "the log keeps every event: a resume is a replay, got {:?}",
        c.welcome
    );
    Some(c)
}

/// Reads `turn` to its end, reconnecting (with a client's backoff) whenever the gateway closes the
/// socket; returns every event received since `c` was opened.
async fn follow(app: &TestApp, mut c: Client, turn: &str) -> Vec<Event> {
    let (session, epoch) = (c.session.clone(), c.epoch());
    let mut all = c.events();
    let mut last = all.last().map(|e| e.seq).unwrap_or(c.welcome_seq());
    loop {
        match c.next_or_close().await {
            Ok(ServerMsg::Event(e)) => {
                last = e.seq;
                let end = e.body.turn_id() == turn && e.body.is_terminal();
                all.push(e);
                if end {
                    return all;
                }
            }
            Ok(_) => {}
            Err(_) => {
                let mut backoff = Duration::from_millis(20);
                c = loop {
                    if let Some(c) = try_resume(app.gateways[0], &session, &epoch, last).await {
                        break c;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_exact_while_redis_connections_are_killed_every_150_ms() {
    let redis = LocalRedis::start(&[]).await.expect("redis-server starts");
    let mut s = test_settings();
    s.model.demo.tokens_per_sec = 60;
    s.model.demo.max_tokens = 60;
    // A worker whose calls fail on every try leaves its turn to the lease: keep takeovers quick.
    s.worker.lease_ms = 1500;
    s.worker.heartbeat_ms = 300;
    s.redis.command_timeout_ms = 1200;
    s.worker.sweep_interval_ms = 200;
    s.worker.max_attempts = 20;
    let app = TestApp::with_url(s, redis.url(), 1, 2).await;
    let clients = streaming_clients(&app, 0, 16, "kill").await;
    let stop = CancellationToken::new();
    let killer = kill_connections(&redis, Duration::from_millis(150), stop.clone());
    let mut followers = Vec::new();
    for (c, turn, prompt) in clients {
        let app = &app;
        followers.push(async move {
            let session = c.session.clone();
            let events = follow(app, c, &turn).await;
            (session, turn, prompt, events)
        });
    }
    let results = futures::future::join_all(followers).await;
    stop.cancel();
    let rounds = killer.await.unwrap();
    assert!(rounds >= 3, "the connections were killed while answers streamed ({rounds} rounds)");
    for (session, turn, prompt, events) in results {
        let expected = app.expected_answer(&prompt);
        // A takeover resets the answer (`reset`) and streams it again: the text after the last
        // reset is the answer, and it must be exact, with no chunk doubled.
        assert_eq!(text_of(&events, &turn), expected, "live text of {prompt}");
        let ends: Vec<_> = events.iter().filter(|e| e.body.turn_id() == turn && e.body.is_terminal()).collect();
        assert_eq!(ends.len(), 1, "{prompt} ended exactly once: {ends:?}");
        assert!(matches!(ends[0].body, EventBody::Done { .. }), "{prompt} ended done: {ends:?}");
        let hist = app.history(&session).await;
        let stored: Vec<_> = hist.iter().filter(|m| m.role == "assistant" && m.turn_id == turn).collect();
        assert_eq!(stored.len(), 1, "one stored answer for {prompt}");
        assert_eq!(stored[0].text, expected, "stored text of {prompt}");
    }
}

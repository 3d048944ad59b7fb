//! Redis Cluster failover: a primary dies mid-stream and its replica takes over.

use std::time::Duration;

use chatfleet::local_cluster::LocalCluster;
use chatfleet::protocol::{ControlMsg, Event, EventBody, ServerMsg};

use crate::helpers::*;

/// How one client's turn came out across the failover.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The turn ended once, with this text (after any `reset`).
    Ended { terminals: usize, text: String },
    /// The session's state was lost with the failed primary, and the client was told so with a
    /// snapshot of a new epoch instead of a wrong replay.
    EpochLost,
}

/// Follows `turn` like a real client: on any close, reconnect (to any gateway) and resume.
async fn follow(app: &TestApp, sid: &str, mut c: Client, turn: &str) -> Outcome {
    let first_epoch = c.epoch();
    // What the client read before (the start of the answer) counts too.
    let mut events: Vec<Event> = c.events();
    c.log.clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "turn {turn} never ended");
        match c.next_or_close().await {
            Ok(ServerMsg::Event(e)) => {
                let end = e.body.turn_id() == turn && e.body.is_terminal();
                events.push(e);
                if end {
                    break;
                }
            }
            Ok(ServerMsg::Control(ControlMsg::Snapshot { epoch, .. })) if epoch != first_epoch => {
                return Outcome::EpochLost;
            }
            Ok(ServerMsg::Control(snap @ ControlMsg::Snapshot { .. })) => {
                if let Some(ended) = take_snapshot(&mut events, &snap, turn) {
                    return ended;
                }
            }
            Ok(_) => {}
            Err(_) => {
                let last = events.last().map(|e| e.seq).or(Some(c.welcome_seq()));
                let epoch = c.epoch();
                // Storage may be unavailable while the replica is promoted: retry the hello.
                c = loop {
                    assert!(tokio::time::Instant::now() < deadline, "could not reconnect");
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        Client::connect(app.gateways[0], sid, Some(epoch.clone()), last),
                    )
                    .await
                    {
                        Ok(c) => break c,
                        Err(_) => continue,
                    }
                };
                if c.epoch() != first_epoch {
                    return Outcome::EpochLost;
                }
                if let Some(snap) = c.snapshot.take() {
                    if let Some(ended) = take_snapshot(&mut events, &snap, turn) {
                        return ended;
                    }
                }
            }
        }
    }
    let terminals = events.iter().filter(|e| e.body.turn_id() == turn && e.body.is_terminal()).count();
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }), "{:?}", events.last());
    Outcome::Ended { terminals, text: text_of(&events, turn) }
}

/// A snapshot of the same epoch (Redis is behind what this client saw: a failover lost writes)
/// replaces what the client had of the turn, as a real client redraws from it. `Some` when the
/// snapshot shows the turn already ended.
fn take_snapshot(events: &mut Vec<Event>, snap: &ControlMsg, turn: &str) -> Option<Outcome> {
    let ControlMsg::Snapshot { seq, messages, active, .. } = snap else { return None };
    events.retain(|e| e.body.turn_id() != turn);
    if let Some(m) = messages.iter().find(|m| m.role == "assistant" && m.turn_id == turn) {
        return Some(Outcome::Ended { terminals: 1, text: m.text.clone() });
    }
    if let Some(a) = active.as_ref().filter(|a| a.turn_id == turn) {
        let body = EventBody::Delta { turn_id: turn.into(), text: a.text.clone() };
        events.push(Event { seq: *seq, first_seq: None, body });
    }
    None
}

/// The port of the primary that serves `slot`, from CLUSTER NODES.
async fn primary_of(cluster: &LocalCluster, slot: u16) -> u16 {
    let nodes = cluster.nodes[0].cli(&["cluster", "nodes"]).await.unwrap();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                if (a..=b).contains(&slot) {
                    let port = f[1].split('@').next().unwrap().rsplit(':').next().unwrap();
                    return port.parse().unwrap();
                }
            }
        }
    }
    panic!("no primary serves slot {slot}")
}

#[tokio::test]
async fn a_primary_failing_over_mid_stream_loses_no_turn_silently() {
    let mut cluster = LocalCluster::start(3, 1, 1000).await.expect("a cluster with replicas forms");
    let mut s = test_settings();
    s.model.demo.max_tokens = 150;
    s.model.demo.tokens_per_sec = 50; // three seconds per answer: the failover happens mid-stream
    s.worker.lease_ms = 2000;
    s.worker.heartbeat_ms = 500;
    s.worker.sweep_interval_ms = 200;
    let app = TestApp::with_url(s, cluster.url(), 1, 2).await;
    let mut turns = Vec::new();
    for i in 0..6 {
        let sid = uid("s");
        let mut c = app.client(0, &sid).await;
        let prompt = format!("failover {i}");
        let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
        turns.push((sid, c, turn, prompt));
    }
    // Let every answer start streaming, then kill the primary of the first session's partition.
    for (_, c, turn, _) in turns.iter_mut() {
        c.until(|e| e.body.turn_id() == turn && matches!(e.body, EventBody::Delta { .. })).await;
    }
    let slot = fred::util::redis_keyslot(app.session_keys(&turns[0].0).stream.as_bytes());
    let port = primary_of(&cluster, slot).await;
    let victim = cluster.nodes.iter_mut().find(|n| n.port() == port).unwrap();
    victim.kill().await;

    let mut ended = 0;
    let mut lost = 0;
    for (sid, c, turn, prompt) in turns {
        match follow(&app, &sid, c, &turn).await {
            Outcome::Ended { terminals, text } => {
                assert_eq!(terminals, 1, "turn {turn} ended {terminals} times");
                assert_eq!(text, app.expected_answer(&prompt), "turn {turn}");
                // Stored whole too: deltas a failover lost were re-sent by the worker.
                let hist = app.history(&sid).await;
                let stored: Vec<_> = hist.iter().filter(|m| m.role == "assistant" && m.turn_id == turn).collect();
                assert_eq!(stored.len(), 1, "one stored answer for {turn}");
                assert_eq!(stored[0].text, app.expected_answer(&prompt), "stored text of {turn}");
                ended += 1;
            }
            Outcome::EpochLost => lost += 1,
        }
    }
    eprintln!("failover: {ended} turns completed exactly once, {lost} sessions lost with the primary and resynced by snapshot");
    assert_eq!(ended + lost, 6);
}

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
/// replaces what the client had of the turn ([`redraw`]). `Some` when it shows the turn ended.
fn take_snapshot(events: &mut Vec<Event>, snap: &ControlMsg, turn: &str) -> Option<Outcome> {
    redraw(events, snap, turn).then(|| Outcome::Ended { terminals: 1, text: text_of(events, turn) })
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
    s.redis.command_timeout_ms = 1500;
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

/// Every slot of the primary serving a busy partition moves to another primary
/// (`redis-cli --cluster reshard`, keys migrated one slot at a time) while answers stream. Each
/// op declares every key it touches, so during a slot's migration Redis sends it where its data
/// is (ASK, TRYAGAIN) instead of running it on a node that lacks it. Every turn ends once, with
/// the exact text, live and stored.
#[tokio::test]
async fn resharding_a_busy_partition_mid_stream_ends_every_turn_once_exactly() {
    let cluster = LocalCluster::start(3, 0, 2000).await.expect("a cluster forms");
    let mut s = test_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 60; // three seconds per answer: the slots move mid-stream
    let app = TestApp::with_url(s, cluster.url(), 1, 2).await;
    let mut turns = Vec::new();
    for i in 0..12 {
        let sid = uid("s");
        let mut c = app.client(0, &sid).await;
        let prompt = format!("reshard {i}");
        let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
        turns.push((sid, c, turn, prompt));
    }
    for (_, c, turn, _) in turns.iter_mut() {
        c.until(|e| e.body.turn_id() == turn && matches!(e.body, EventBody::Delta { .. })).await;
    }
    // The primary of the first session's partition gives all its slots to another primary.
    let slot = fred::util::redis_keyslot(app.session_keys(&turns[0].0).stream.as_bytes());
    let from_port = primary_of(&cluster, slot).await;
    let from = cluster.nodes.iter().find(|n| n.port() == from_port).unwrap();
    let to = cluster.nodes.iter().find(|n| n.port() != from_port).unwrap();
    let from_id = from.cli(&["cluster", "myid"]).await.unwrap().trim().to_string();
    let to_id = to.cli(&["cluster", "myid"]).await.unwrap().trim().to_string();
    let slots = from.cli(&["cluster", "countkeysinslot", &slot.to_string()]).await.unwrap();
    assert!(slots.trim().parse::<u64>().unwrap() > 0, "the busy partition's slot holds keys");
    let reshard = tokio::spawn(async move {
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from_port}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id, "--cluster-slots", "16384"])
            .args(["--cluster-yes", "--cluster-pipeline", "100"])
            .output()
            .await
            .expect("redis-cli runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    });

    let mut followers = Vec::new();
    for (sid, c, turn, prompt) in turns {
        let app = &app;
        followers.push(async move { (follow(app, &sid, c, &turn).await, sid, turn, prompt) });
    }
    let results = futures::future::join_all(followers).await;
    let (ok, out) = reshard.await.unwrap();
    assert!(ok, "the reshard completed: {}", &out[out.len().saturating_sub(2000)..]);
    assert_eq!(primary_of(&cluster, slot).await, to.port(), "the busy slot moved");
    for (outcome, sid, turn, prompt) in results {
        let Outcome::Ended { terminals, text } = outcome else { panic!("{prompt}: a reshard loses no session") };
        assert_eq!(terminals, 1, "{prompt} ended once");
        assert_eq!(text, app.expected_answer(&prompt), "live text of {prompt}");
        let hist = app.history(&sid).await;
        let stored: Vec<_> = hist.iter().filter(|m| m.role == "assistant" && m.turn_id == turn).collect();
        assert_eq!(stored.len(), 1, "one stored answer for {prompt}");
        assert_eq!(stored[0].text, app.expected_answer(&prompt), "stored text of {prompt}");
    }
}

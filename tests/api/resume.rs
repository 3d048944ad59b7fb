//! Resume: a client that reconnects gets exactly what it missed, no gap and no duplicate.

use chatfleet::protocol::{ControlMsg, EventBody, ResumeKind, ServerMsg};

use crate::helpers::*;

#[tokio::test]
async fn a_client_that_reconnects_mid_answer_with_last_seq_gets_exactly_the_rest() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 300;
    let app = TestApp::with(s, 2, 1).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let prompt = "resume me";
    let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
    // Read a few deltas, then drop the connection mid-answer.
    let mut deltas = 0;
    while deltas < 3 {
        if let ServerMsg::Event(e) = c.next().await {
            deltas += matches!(e.body, EventBody::Delta { .. }) as usize;
        }
    }
    let before = c.events();
    let last = before.last().unwrap().seq;
    let epoch = c.epoch();
    drop(c);

    // Resume on the other gateway.
    let mut r = Client::connect(app.gateways[1], &sid, Some(epoch), Some(last)).await;
    assert!(matches!(r.welcome, ControlMsg::Welcome { resume: ResumeKind::Replay, .. }));
    r.until_end(&turn).await;
    let after = r.events();
    assert_eq!(after.first().unwrap().first_seq.unwrap_or(after[0].seq), last + 1, "no gap, no duplicate");
    let mut all = before.clone();
    all.extend(after);
    assert_contiguous(&all, before[0].seq);
    assert_eq!(text_of(&all, &turn), app.expected_answer(prompt));
}

#[tokio::test]
async fn a_client_without_last_seq_gets_a_snapshot_with_the_partial_answer_then_the_rest() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 300;
    let app = TestApp::with(s, 1, 1).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let prompt = "refresh mid answer";
    let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
    let mut deltas = 0;
    while deltas < 3 {
        if let ServerMsg::Event(e) = c.next().await {
            deltas += matches!(e.body, EventBody::Delta { .. }) as usize;
        }
    }
    drop(c);

    // A page refresh that lost its state: snapshot, then live events after the snapshot's seq.
    let mut r = app.client(0, &sid).await;
    let Some(ControlMsg::Snapshot { seq, messages, active, .. }) = r.snapshot.clone() else {
        panic!("expected a snapshot, got {:?}", r.snapshot)
    };
    assert_eq!(messages.len(), 1, "the user message; the answer is still running");
    let active = active.expect("the running turn is in the snapshot");
    assert_eq!(active.turn_id, turn);
    r.until_end(&turn).await;
    let rest = r.events();
    assert_contiguous(&rest, seq + 1);
    assert_eq!(format!("{}{}", active.text, text_of(&rest, &turn)), app.expected_answer(prompt));
}

/// Reads frames until the turn ends or the connection is cut after `budget` frames.
/// Returns true when the turn ended.
async fn read_some(c: &mut Client, turn: &str, budget: usize) -> bool {
    for _ in 0..budget {
        if let ServerMsg::Event(e) = c.next().await {
            if e.body.turn_id() == turn && e.body.is_terminal() {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn two_hundred_turns_survive_connections_killed_at_random_points() {
    use rand::Rng;
    let mut s = test_settings();
    s.model.demo.max_tokens = 40;
    s.model.demo.tokens_per_sec = 800;
    s.worker.coalesce_ms = 5;
    let app = std::sync::Arc::new(TestApp::with(s, 2, 2).await);
    const SESSIONS: usize = 20;
    const TURNS: usize = 10;
    let mut tasks = Vec::new();
    for si in 0..SESSIONS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let sid = uid("s");
            let mut all: Vec<chatfleet::protocol::Event> = Vec::new();
            let mut c = app.client(si % 2, &sid).await;
            let first_seq = c.welcome_seq() + 1;
            let mut reconnects = 0;
            for ti in 0..TURNS {
                let prompt = format!("session {si} turn {ti}");
                let (turn, _) = c.send_and_ack(&uid("m"), &prompt).await;
                loop {
                    let budget = rand::rng().random_range(1..12);
                    let ended = read_some(&mut c, &turn, budget).await;
                    all.extend(c.events());
                    c.log.clear();
                    if ended {
                        break;
                    }
                    // Cut the connection here and resume on a random gateway.
                    let last = all.last().map(|e| e.seq).unwrap_or(first_seq - 1);
                    let gw = rand::rng().random_range(0..2);
                    let epoch = c.epoch();
                    drop(c);
                    c = Client::connect(app.gateways[gw], &sid, Some(epoch), Some(last)).await;
                    assert!(matches!(c.welcome, ControlMsg::Welcome { resume: ResumeKind::Replay, .. }));
                    reconnects += 1;
                }
                assert_eq!(text_of(&all, &turn), app.expected_answer(&prompt), "turn {ti} of session {si}");
            }
            assert_contiguous(&all, first_seq);
            reconnects
        }));
    }
    let mut reconnects = 0;
    for t in tasks {
        reconnects += t.await.unwrap();
    }
    assert!(reconnects >= SESSIONS * TURNS / 2, "the connections were really cut ({reconnects} reconnects)");
}

#[tokio::test]
async fn killing_the_gateways_pubsub_connection_mid_stream_loses_no_event() {
    use fred::interfaces::ClientLike as _;
    let mut s = test_settings();
    s.model.demo.max_tokens = 300;
    s.model.demo.tokens_per_sec = 400;
    let app = TestApp::with(s, 1, 1).await;
    // Wait until every answer is streaming, then cut every pub/sub connection.
    let mut clients = streaming_clients(&app, 0, 4, "pubsub kill").await;
    let raw = app.raw().await;
    let killed: u64 = raw.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"]).await.unwrap();
    assert!(killed >= 1, "a pub/sub connection was killed");
    assert_answers_whole(&app, &mut clients).await;
}

#[tokio::test]
async fn with_one_log_read_at_a_time_every_connection_catches_up_after_pubsub_losses() {
    use fred::interfaces::ClientLike as _;
    let mut s = test_settings();
    s.model.demo.max_tokens = 300;
    s.model.demo.tokens_per_sec = 400;
    // Every catch-up and gap fill of the gateway waits for the one turn: they queue behind each
    // other while live events keep arriving, and each connection must still end with every event
    // exactly once. A turn taken twice by one read (a snapshot inside a gap fill) would hang here.
    s.gateway.max_concurrent_catchups = 1;
    let app = TestApp::with(s, 1, 1).await;
    let mut clients = streaming_clients(&app, 0, 8, "catch up in turn").await;
    // Two losses while the answers stream: every connection resyncs twice.
    let raw = app.raw().await;
    for _ in 0..2 {
        // The second kill waits until the subscriber has reconnected after the first.
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        loop {
            let killed: u64 = raw.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"]).await.unwrap();
            if killed >= 1 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the pub/sub connection never came back");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (c, turn, _) = &mut clients[0];
        c.until(|e| e.body.turn_id() == turn && matches!(e.body, EventBody::Delta { .. })).await;
    }
    assert_answers_whole(&app, &mut clients).await;
}

#[tokio::test]
async fn after_flushall_a_resuming_client_gets_a_snapshot_of_the_new_epoch_not_a_replay() {
    use fred::interfaces::ClientLike as _;
    let app = TestApp::spawn().await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let (turn, _) = c.send_and_ack(&uid("m"), "before the flush").await;
    c.until_end(&turn).await;
    let (old_epoch, last) = (c.epoch(), c.last_seq().unwrap());
    drop(c);
    let raw = app.raw().await;
    let _: () = raw.flushall(false).await.unwrap();

    let r = Client::connect(app.gateways[0], &sid, Some(old_epoch.clone()), Some(last)).await;
    let ControlMsg::Welcome { epoch, resume, .. } = &r.welcome else { unreachable!() };
    assert_eq!(*resume, ResumeKind::Snapshot);
    assert_ne!(*epoch, old_epoch);
    let Some(ControlMsg::Snapshot { messages, reason, .. }) = &r.snapshot else { panic!("no snapshot") };
    assert_eq!(reason, "epoch");
    assert!(messages.is_empty(), "the lost history is not replayed as if it were current");
}

#[tokio::test]
async fn a_live_connection_across_flushall_switches_to_a_snapshot_of_the_new_epoch() {
    use fred::interfaces::ClientLike as _;
    let app = TestApp::spawn().await;
    let sid = uid("s");
    let mut watcher = app.client(0, &sid).await;
    let mut sender = app.client(0, &sid).await;
    let (turn, _) = sender.send_and_ack(&uid("m"), "one").await;
    watcher.until_end(&turn).await;
    let old_epoch = watcher.epoch();
    let raw = app.raw().await;
    let _: () = raw.flushall(false).await.unwrap();
    // A send recreates the session under a new epoch with seqs starting again at 1.
    let (turn2, seq2) = sender.send_and_ack(&uid("m"), "two").await;
    assert_eq!(seq2, 1);
    loop {
        match watcher.next().await {
            ServerMsg::Control(ControlMsg::Snapshot { epoch, .. }) => {
                assert_ne!(epoch, old_epoch);
                break;
            }
            ServerMsg::Event(e) if e.body.turn_id() == turn2 => {
                panic!("an event of the new epoch arrived before its snapshot: {e:?}")
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_same_send_through_two_gateways_makes_exactly_one_turn() {
    let app = TestApp::with(test_settings(), 2, 1).await;
    let sid = uid("s");
    let mut a = app.client(0, &sid).await;
    let mut b = app.client(1, &sid).await;
    let cmid = uid("m");
    let (ra, rb) = tokio::join!(a.send_and_ack(&cmid, "exactly once"), b.send_and_ack(&cmid, "exactly once"));
    assert_eq!(ra, rb, "both gateways ack the same turn and seq");
    a.until_end(&ra.0).await;
    let hist = app.history(&sid).await;
    assert_eq!(hist.iter().filter(|m| m.role == "user").count(), 1);
    assert_eq!(hist.len(), 2);
}

/// Each client's turn ends, with every seq since its welcome exactly once and the whole answer.
async fn assert_answers_whole(app: &TestApp, clients: &mut [(Client, String, String)]) {
    for (c, turn, prompt) in clients.iter_mut() {
        c.until_end(turn).await;
        let events = c.events();
        assert_contiguous(&events, c.welcome_seq() + 1);
        assert_eq!(text_of(&events, turn), app.expected_answer(prompt));
    }
}

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

//! `start` and the history a starting turn reads: beside the op, as a plain LRANGE, while a
//! process of the previous build (which does not ask for that) still gets it inside the reply.
//! Against a real redis-server.

use super::ops::OpBuilder;
use super::resend_tests::{finish_args, fixture};
use super::session::history;
use super::*;

#[tokio::test]
async fn a_start_reads_the_history_beside_its_op_and_an_older_caller_still_gets_it_inside() {
    let f = fixture().await;
    let base = &f.keys.base;
    f.enqueue("t1", "c1", "u1").await;
    let eid = f.entry_of("t1").await;
    let StartOutcome::Run { history: first, .. } = f.store.start_turn_as(base, "t1", &eid, "w1", "r1").await.unwrap()
    else {
        panic!("t1 runs")
    };
    assert_eq!(first.len(), 1, "the turn's own message");
    let w = f.store.writer(base, "t1", &eid, 1);
    w.emit("answer one", 0, None).await.unwrap();
    assert!(w.finish(&finish_args()).await.unwrap().is_some());

    f.enqueue("t2", "c2", "u1").await;
    let eid = f.entry_of("t2").await;
    let StartOutcome::Run { attempt, history: got, .. } =
        f.store.start_turn_as(base, "t2", &eid, "w1", "r2").await.unwrap()
    else {
        panic!("t2 runs")
    };
    let roles: Vec<(&str, &str, &str)> =
        got.iter().map(|m| (m.role.as_str(), m.turn_id.as_str(), m.text.as_str())).collect();
    assert_eq!(roles, [("user", "t1", "hello"), ("assistant", "t1", "answer one"), ("user", "t2", "hello")]);

    // The same start as a process of the previous build sends it (no history flag): a resend of
    // request r2, so it answers `run` again, with the history in its reply.
    let op = || OpBuilder::turn("start", base, "t2").key(f.keys.stream.clone()).str("t2").str(&eid).str("w1").str("r2");
    let mut r = f.store.op(base, op().build()).await.unwrap();
    assert_eq!(r.string().unwrap(), "run");
    assert_eq!(r.int().unwrap() as u32, attempt);
    assert_eq!(history(r.array().unwrap()).unwrap(), got);
    // With the flag, as this build sends it, the reply carries none: Lua copied nothing.
    let mut r = f.store.op(base, op().str("1").build()).await.unwrap();
    assert_eq!(r.string().unwrap(), "run");
    r.int().unwrap();
    assert_eq!(r.array().unwrap().len(), 0);
}

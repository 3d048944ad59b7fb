//! A failover that loses acknowledged writes: the promoted replica lacks the last deltas the
//! worker was told were written. The worker's next write finds the partial text shorter than its
//! deltas add up to and re-sends the difference, so the answer stored has no hole. Simulated
//! exactly on a real redis-server: every key is dumped, writes are acknowledged, then the dump is
//! restored over them (what a replica that had not received those writes holds).

use bytes::Bytes;
use fred::prelude::*;

use super::*;
use crate::local_redis::LocalRedis;

struct Snapshot(Vec<(String, Bytes)>);

/// Every key of the (private) server, dumped.
async fn snapshot(raw: &Client) -> Snapshot {
    let keys: Vec<String> = raw.custom(fred::cmd!("KEYS"), vec!["*"]).await.unwrap();
    let mut dumped = Vec::new();
    for k in keys {
        let d: Bytes = raw.custom(fred::cmd!("DUMP"), vec![k.clone()]).await.unwrap();
        dumped.push((k, d));
    }
    Snapshot(dumped)
}

/// Puts the server back to `snap`: the writes since are lost.
async fn lose_writes_since(raw: &Client, snap: &Snapshot) {
    let _: () = raw.flushall(false).await.unwrap();
    for (k, d) in &snap.0 {
        let args: Vec<Value> = vec![k.as_str().into(), 0.into(), d.clone().into(), "REPLACE".into()];
        let _: () = raw.custom(fred::cmd!("RESTORE"), args).await.unwrap();
    }
}

fn done() -> FinishArgs<'static> {
    FinishArgs {
        outcome: "done",
        prompt_tokens: 1,
        completion_tokens: 4,
        usage_source: UsageSource::Reported,
        error_code: "",
        error_message: "",
        dead_letter: false,
        audit: None,
        citations: None,
    }
}

#[tokio::test]
async fn deltas_lost_by_a_failover_are_resent_and_the_stored_answer_is_whole() {
    let redis = LocalRedis::start(&[]).await.expect("redis-server starts");
    let mut settings = Settings::defaults();
    settings.redis.url = redis.url();
    let conn = Redis::connect(&settings.redis).await.expect("connects");
    let raw = conn.client().clone();
    let store = Store::new(conn, &settings);
    store.ensure_schema().await.expect("schema");
    let keys = store.keys().session("acme", "s1");
    let base = keys.base.clone();
    store.enqueue_turn(&keys, "t1", &NewMessage::text("c1", "hi"), "epoch1", &[], "u1").await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = raw.xrange(&keys.stream, "-", "+", None).await.unwrap();
    let eid = entries[0].0.clone();
    let StartOutcome::Run { attempt, .. } = store.start_turn_as(&base, "t1", &eid, "w1", "r1").await.unwrap() else {
        panic!("runs")
    };
    let w = store.writer(&base, "t1", &eid, attempt);
    let partial = || async { raw.get::<String, _>(format!("{base}:partial")).await.unwrap() };

    // Two acknowledged deltas are lost; the next one carries them again.
    assert!(matches!(w.emit("Hel", 0, None).await.unwrap(), WriteOutcome::Written { .. }));
    let snap = snapshot(&raw).await;
    assert!(matches!(w.emit("lo", 0, None).await.unwrap(), WriteOutcome::Written { .. }));
    assert!(matches!(w.emit(" wor", 0, None).await.unwrap(), WriteOutcome::Written { .. }));
    lose_writes_since(&raw, &snap).await;
    assert_eq!(partial().await, "Hel", "the failover lost two deltas");
    assert!(matches!(w.emit("ld", 0, None).await.unwrap(), WriteOutcome::Written { .. }));
    assert_eq!(partial().await, "Hello world");
    match store.read_log(&base, 0, 100, "epoch1", false).await.unwrap() {
        LogRead::Events { events, .. } => {
            let deltas: Vec<String> = events
                .into_iter()
                .filter_map(|(_, e)| match e {
                    crate::payload::StoredEvent::Delta { text, .. } => Some(text),
                    _ => None,
                })
                .collect();
            assert_eq!(deltas, ["Hel", "lo world"], "the log has the lost text once, in order");
        }
        other => panic!("the log reads: {other:?}"),
    }

    // A delta lost just before the end: finish finds it missing, re-sends it, then ends.
    let snap = snapshot(&raw).await;
    assert!(matches!(w.emit("!", 0, None).await.unwrap(), WriteOutcome::Written { .. }));
    lose_writes_since(&raw, &snap).await;
    assert!(w.finish(&done()).await.unwrap().is_some(), "the turn ends");
    let hist: Vec<Bytes> = raw.lrange(format!("{base}:hist"), 0, -1).await.unwrap();
    let answer = crate::payload::decode_history(hist.last().unwrap()).unwrap();
    assert_eq!(answer.text, "Hello world!", "the stored answer is whole");
}

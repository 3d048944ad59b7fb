//! Transports race [`Feed::next`] against client reads, pings and coalescing windows, and drop
//! it mid-await. These tests cancel it at arbitrary points while live frames arrive with gaps,
//! against a real redis-server, and check that every event still comes out exactly once, in
//! order.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use fred::prelude::*;

use super::fixture::Fixture;
use super::*;
use crate::payload::StoredEvent;

/// Events in the session.
const EVENTS: u64 = 600;

fn delta(seq: u64) -> Vec<u8> {
    let ev = StoredEvent::Delta { v: 1, turn_id: "t1".into(), text: format!("<{seq}>") };
    rmp_serde::to_vec_named(&ev).expect("encodes")
}

/// Writes events `seqs` the way the Lua library does (meta seq, log entry), and publishes each
/// unless `dropped(seq)`. One pipeline, so the hub gets them in a burst and connections see
/// batches that mix in-order frames and gaps.
async fn append(client: &Client, keys: &SessionKeys, epoch: &str, seqs: std::ops::RangeInclusive<u64>) {
    let pipe = client.pipeline();
    for seq in seqs {
        let body = delta(seq);
        let _: () = pipe.hincrby(format!("{}:meta", keys.base), "seq", 1).await.expect("queued");
        let _: () = pipe
            .xadd(format!("{}:log", keys.base), false, None, format!("{seq}-0"), ("e", body.clone()))
            .await
            .expect("queued");
        if !dropped(seq) {
            let msg = rmp_serde::to_vec(&(seq, serde_bytes::ByteBuf::from(body), epoch)).expect("encodes");
            let _: () = pipe.spublish(keys.channel(), msg).await.expect("queued");
        }
    }
    let _: Vec<Value> = pipe.all().await.expect("pipeline");
}

/// Every third event is logged but never published, like frames a lagged pub/sub receiver
/// dropped. The last one is published, so the feed learns there is more.
fn dropped(seq: u64) -> bool {
    seq % 3 == 0 && seq != EVENTS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cancelled_at_any_await_hands_out_every_event_once_in_order() {
    // One log read at a time: cancelling a feed that waits for its turn must lose nothing either.
    let f = Fixture::start().await;
    let (store, hub, writer, keys) = (&f.store, &f.hub, f.writer.clone(), f.keys.clone());

    let (mut feed, opening) = Feed::open(hub, store, keys.clone(), "s1", None, None, false, "").await.expect("opens");
    let ControlMsg::Welcome { epoch, seq: 0, .. } = opening.welcome else { panic!("a new session starts at seq 0") };

    let producer = tokio::spawn({
        let keys = keys.clone();
        async move {
            for first in (1..=EVENTS).step_by(10) {
                append(&writer, &keys, &epoch, first..=(first + 9).min(EVENTS)).await;
            }
        }
    });

    // Every other call is polled once and dropped if it has to wait: on the hub, or on a log
    // read that fills a gap. The others wait up to 5 ms, and are dropped wherever they are then.
    let mut seen = Vec::new();
    let mut cancelled = 0u32;
    let overall = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0u64;
    while seen.last().copied() != Some(EVENTS) {
        assert!(tokio::time::Instant::now() < overall, "the feed stalled at {:?}", seen.last());
        n += 1;
        let got = if n % 2 == 0 {
            let mut next = std::pin::pin!(feed.next());
            match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            }
        } else {
            tokio::time::timeout(Duration::from_millis(5), feed.next()).await.ok()
        };
        match got {
            None => cancelled += 1,
            Some(Ok(Item::Frames(frames))) => seen.extend(frames.iter().map(|f| f.seq)),
            Some(Ok(Item::Snapshot(s))) => panic!("the log holds every event; got a snapshot {s:?}"),
            Some(Err(e)) => panic!("feed failed: {e}"),
        }
    }
    producer.await.expect("producer");
    assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>(), "every event once, in order");
    assert!(cancelled > 0, "the test must cancel some calls to mean anything");
}

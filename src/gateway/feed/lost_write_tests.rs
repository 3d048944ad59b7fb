//! Redis losing writes a connection saw, then taking new writes under the same seqs (a failover
//! to a lagging replica, or a restart from an older snapshot, with the worker writing again
//! before the gateway's subscription is back). The connection's seq is then not ahead of the
//! session's, so only the event at that seq tells the histories apart: the feed must answer with
//! a snapshot, not hand out what follows as if the rest were the same.

use std::time::Duration;

use bytes::Bytes;

use fred::prelude::*;

use super::fixture::Fixture;
use super::*;
use crate::payload::StoredEvent;

fn delta(text: &str) -> Vec<u8> {
    let ev = StoredEvent::Delta { v: 1, turn_id: "t1".into(), text: text.into() };
    rmp_serde::to_vec_named(&ev).expect("encodes")
}

/// Appends events the way the Lua library does (meta seq, log entry), published or not.
async fn append(client: &Client, keys: &SessionKeys, epoch: &str, texts: &[&str], publish: bool) {
    for text in texts {
        let seq: u64 = client.hincrby(format!("{}:meta", keys.base), "seq", 1).await.expect("hincrby");
        let body = delta(text);
        let _: String = client
            .xadd(format!("{}:log", keys.base), false, None, format!("{seq}-0"), ("e", body.clone()))
            .await
            .expect("xadd");
        if publish {
            let msg = rmp_serde::to_vec(&(seq, serde_bytes::ByteBuf::from(body), epoch)).expect("encodes");
            let _: i64 = client.spublish(keys.channel(), msg).await.expect("spublish");
        }
    }
}

fn texts(item: &Item) -> Vec<String> {
    match item {
        Item::Frames(frames) => frames
            .iter()
            .filter_map(|f| match &f.body {
                EventBody::Delta { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect(),
        Item::Snapshot(_) => Vec::new(),
    }
}

#[tokio::test]
async fn writes_that_reuse_lost_seqs_end_in_a_snapshot_not_a_hole() {
    let f = Fixture::start().await;
    let (store, hub, writer, keys) = (&f.store, &f.hub, f.writer.clone(), f.keys.clone());
    let (mut feed, opening) = Feed::open(hub, store, keys.clone(), "s1", None, None, false, "").await.expect("opens");
    let ControlMsg::Welcome { epoch, .. } = opening.welcome else { panic!("welcome") };

    let (meta, log) = (format!("{}:meta", keys.base), format!("{}:log", keys.base));
    append(&writer, &keys, &epoch, &["He", "ll", "o "], true).await;
    // What a lagging replica (or an older snapshot) holds: the session up to seq 3.
    let dump = |k: String| {
        let w = writer.clone();
        async move { (k.clone(), w.custom::<Bytes, _>(fred::cmd!("DUMP"), vec![k]).await.expect("dump")) }
    };
    let saved = [dump(meta.clone()).await, dump(log.clone()).await];
    append(&writer, &keys, &epoch, &["wo", "rl"], true).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let item = tokio::time::timeout(Duration::from_secs(5), feed.next()).await.expect("in time").expect("feed");
        seen.extend(texts(&item));
    }
    assert_eq!(seen, ["He", "ll", "o ", "wo", "rl"]);

    // Redis forgets seqs 4 and 5, and the writer goes on from what Redis has: "lo world!" under
    // seqs 4..6, published while the gateway's subscription was down (nobody got them live).
    for (k, d) in saved {
        let args: Vec<Value> = vec![k.into(), 0.into(), d.into(), "REPLACE".into()];
        let _: () = writer.custom(fred::cmd!("RESTORE"), args).await.expect("restore");
    }
    append(&writer, &keys, &epoch, &["lo", " wor", "ld!"], false).await;
    // The subscription drops and comes back, as it does when Redis restarts or fails over.
    let _: Value = writer.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"]).await.expect("client kill");

    let item = tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("in time").expect("feed");
    let Item::Snapshot(ControlMsg::Snapshot { seq, .. }) = item else {
        panic!("the connection had \"He llo wo rl\"; the log now says \"He llo lo wor ld!\": got {:?}", texts(&item))
    };
    assert_eq!(seq, 6, "the snapshot is what Redis holds now");
}

//! The hub against a real redis-server: membership and the SSUBSCRIBE/SUNSUBSCRIBE order that
//! Redis sees when connections leave and join the same channel at once.

use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::local_redis::LocalRedis;
use crate::payload::StoredEvent;
use crate::settings::Settings;
use crate::store::Redis;

/// Publishes event `seq` on `channel` the way the Lua library does.
async fn publish(client: &Client, channel: &str, seq: u64) {
    let ev = StoredEvent::Delta { v: 1, turn_id: "t1".into(), text: format!("<{seq}>") };
    let body = rmp_serde::to_vec_named(&ev).expect("encodes");
    let msg = rmp_serde::to_vec(&(seq, serde_bytes::ByteBuf::from(body), "e1")).expect("encodes");
    let _: i64 = client.spublish(channel, msg).await.expect("publishes");
}

/// A hub on a fresh redis-server; `conn` publishes and asks Redis what it sees.
struct Fixture {
    _redis: LocalRedis,
    conn: Redis,
    hub: Hub,
    shutdown: CancellationToken,
}

async fn fixture(subscribe_timeout: Duration) -> Fixture {
    let redis = LocalRedis::start(&[]).await.expect("redis-server starts");
    let mut settings = Settings::defaults();
    settings.redis.url = redis.url();
    let conn = Redis::connect(&settings.redis).await.expect("connects");
    let shutdown = CancellationToken::new();
    let limits = HubLimits {
        queue_events: 100,
        queue_bytes: 1 << 20,
        log_reads: 1,
        subscribe_timeout,
        cluster_check: Duration::from_secs(1),
    };
    let hub = Hub::start(conn.subscriber().await.expect("subscriber"), limits, shutdown.clone());
    Fixture { _redis: redis, conn, hub, shutdown }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_that_races_a_join_of_the_same_channel_does_not_unsubscribe_the_new_member() {
    let Fixture { _redis, conn, hub, shutdown } = fixture(Duration::from_secs(5)).await;

    // The last member leaves; a new one joins the same channel while the leave's Unsubscribe
    // is still on its way to the command task (as when `leave` is preempted between taking the
    // channel out of the map and queueing the command). Here the Unsubscribe arrives last.
    drop(hub.join("ch{a}").await.expect("joins"));
    let member = hub.join("ch{a}").await.expect("joins again");
    hub.inner.commands.send(Command::Unsubscribe("ch{a}".into())).await.expect("queued");
    // A confirmed join of another channel: every command queued before it has been applied.
    let _other = hub.join("ch{b}").await.expect("joins");

    publish(conn.client(), "ch{a}", 7).await;
    let frames = tokio::time::timeout(Duration::from_secs(5), member.mailbox.take())
        .await
        .expect("the member still receives its channel's events")
        .expect("not overflowed");
    assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![7]);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_member_leaving_unsubscribes_the_channel() {
    let Fixture { _redis, conn, hub, shutdown } = fixture(Duration::from_secs(5)).await;

    drop(hub.join("ch{a}").await.expect("joins"));
    let _other = hub.join("ch{b}").await.expect("joins");
    let subscribers: Vec<String> =
        conn.client().custom(fred::cmd!("PUBSUB"), vec!["SHARDNUMSUB", "ch{a}", "ch{b}"]).await.expect("asks");
    assert_eq!(subscribers, ["ch{a}", "0", "ch{b}", "1"]);
    assert_eq!(hub.channels(), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_while_the_pubsub_connection_is_killed_again_and_again_all_succeed_and_receive() {
    use fred::interfaces::ClientLike as _;
    let Fixture { _redis, conn, hub, shutdown } = fixture(Duration::from_secs(10)).await;

    // The pub/sub connection is killed every few milliseconds while 200 joins are under way:
    // SSUBSCRIBEs fail in flight. Each join must still succeed, once the connection is back.
    let stop = CancellationToken::new();
    let killer = {
        let (client, stop) = (conn.client().clone(), stop.clone());
        tokio::spawn(async move {
            let mut kills = 0u64;
            while !stop.is_cancelled() {
                let n: u64 = client.custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "pubsub"]).await.unwrap_or(0);
                kills += n;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            kills
        })
    };
    let joins = (0..200).map(|i| {
        let hub = hub.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(3 * i)).await;
            hub.join(&format!("ch{{{i}}}")).await
        }
    });
    let members: Vec<_> = futures::future::join_all(joins).await;
    stop.cancel();
    let kills = killer.await.expect("killer ran");
    assert!(kills >= 5, "the connection was really killed during the joins ({kills} kills)");
    let members: Vec<Subscription> =
        members.into_iter().enumerate().map(|(i, m)| m.unwrap_or_else(|e| panic!("join {i} failed: {e}"))).collect();

    // Members that joined early lost their subscription to later kills: what was published
    // meanwhile is for the resync to catch up (the log is the truth). Once the last reconnect's
    // resubscription is through, every channel is subscribed again, and a publish reaches each.
    let channels: Vec<String> = (0..members.len()).map(|i| format!("ch{{{i}}}")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<Value> = conn
            .client()
            .custom(fred::cmd!("PUBSUB"), [vec!["SHARDNUMSUB".to_string()], channels.clone()].concat())
            .await
            .expect("asks");
        if counts.chunks(2).all(|c| c[1].as_i64() == Some(1)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "every channel is subscribed again after the kills");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..members.len() {
        publish(conn.client(), &format!("ch{{{i}}}"), i as u64 + 1).await;
    }
    for (i, m) in members.iter().enumerate() {
        let frames = tokio::time::timeout(Duration::from_secs(5), m.mailbox.take())
            .await
            .unwrap_or_else(|_| panic!("member {i} gets its channel's event"))
            .expect("not overflowed");
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![i as u64 + 1]);
    }
    shutdown.cancel();
}

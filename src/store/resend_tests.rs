//! Every write is safe to resend (lua/chatfleet.lua, I5): each op sent a second time, as the
//! Redis client does when a connection drops before the reply arrives, must answer as the first
//! time and change nothing. Against a real redis-server.

use std::collections::HashMap;

use bytes::Bytes;
use fred::prelude::*;

use super::*;
use crate::keys::{self, SessionKeys};
use crate::local_redis::LocalRedis;
use crate::payload::HistoryMessage;

/// A store on a fresh redis-server (4 partitions), a raw client, and session `s1` of `acme`.
pub(super) struct Fixture {
    _redis: LocalRedis,
    pub store: Store,
    pub raw: Client,
    pub keys: SessionKeys,
}

pub(super) async fn fixture() -> Fixture {
    fixture_with(false).await
}

/// `archiving`: turn ends go to the archive streams (no PostgreSQL is needed on this side).
async fn fixture_with(archiving: bool) -> Fixture {
    let redis = LocalRedis::start(&[]).await.expect("redis-server starts");
    let mut settings = Settings::defaults();
    if archiving {
        settings.archive.url = "postgres://unused.invalid/archive".into();
    }
    settings.redis.url = redis.url();
    settings.redis.partitions = 4;
    let conn = Redis::connect(&settings.redis).await.expect("connects");
    let store = Store::new(conn.clone(), &settings);
    store.ensure_schema().await.expect("schema");
    let keys = store.keys().session("acme", "s1");
    Fixture { _redis: redis, raw: conn.client().clone(), store, keys }
}

impl Fixture {
    async fn log_len(&self) -> u64 {
        self.raw.xlen(keys::log_key(&self.keys.base)).await.unwrap()
    }

    pub async fn entry_of(&self, turn: &str) -> String {
        let entries: Vec<(String, Vec<(String, String)>)> =
            self.raw.xrange(&self.keys.stream, "-", "+", None).await.unwrap();
        let found = entries.into_iter().find(|(_, f)| f.iter().any(|(k, v)| k == "t" && v == turn));
        found.expect("the turn's entry").0
    }

    pub async fn enqueue(&self, turn: &str, cmid: &str, user: &str) -> EnqueueOutcome {
        self.store.enqueue_turn(&self.keys, turn, &NewMessage::text(cmid, "hello"), "epoch1", &[], user).await.unwrap()
    }
}

#[tokio::test]
async fn every_turn_write_sent_twice_is_applied_once() {
    let f = fixture().await;
    let EnqueueOutcome::New { seq, .. } = f.enqueue("t1", "c1", "u1").await else { panic!("new turn") };
    assert_eq!(
        f.enqueue("t1b", "c1", "u1").await,
        EnqueueOutcome::Duplicate { turn_id: "t1".into(), seq, epoch: "epoch1".into() }
    );
    let eid = f.entry_of("t1").await;
    let stream_len: u64 = f.raw.xlen(&f.keys.stream).await.unwrap();
    assert_eq!(stream_len, 1, "the resent send queued nothing");

    // start: the same request twice gets the same attempt, and one turn_started.
    let base = &f.keys.base;
    let a = f.store.start_turn_as(base, "t1", &eid, "w1", "req-1").await.unwrap();
    let b = f.store.start_turn_as(base, "t1", &eid, "w1", "req-1").await.unwrap();
    let (StartOutcome::Run { attempt: a1, .. }, StartOutcome::Run { attempt: a2, .. }) = (a, b) else {
        panic!("both answers are run")
    };
    assert_eq!((a1, a2), (1, 1));
    assert_eq!(f.log_len().await, 2, "user_message and one turn_started");
    // Another request is another worker's claim: held, not a second start.
    let c = f.store.start_turn_as(base, "t1", &eid, "w2", "req-2").await.unwrap();
    assert!(matches!(c, StartOutcome::Held), "{c:?}");

    let w = f.store.writer(base, "t1", &eid, 1);
    let first = w.emit("Hel", 0, None).await.unwrap();
    w.rewind();
    assert_eq!(w.emit("Hel", 0, None).await.unwrap(), first, "a resent delta answers as the first time");
    let second = w.emit("lo", 0, None).await.unwrap();
    assert_ne!(first, second);
    let partial: String = f.raw.get(format!("{base}:partial")).await.unwrap();
    assert_eq!(partial, "Hello", "each delta is in the partial text once");
    assert_eq!(f.log_len().await, 4);

    let record = Some(("call-1", &b"record"[..]));
    let tool = w.tool_status("calc", "running", record).await.unwrap();
    w.rewind();
    assert_eq!(w.tool_status("calc", "running", record).await.unwrap(), tool);
    assert_eq!(f.log_len().await, 5, "one tool_status event");

    assert_eq!(w.heartbeat(0).await.unwrap(), Some(false));
    w.rewind();
    assert_eq!(w.heartbeat(0).await.unwrap(), Some(false));
    let audit = TurnAudit { upstream: "up".into(), model: "m".into(), template: "v1".into() };
    assert!(w.audit(&audit).await.unwrap());
    w.rewind();
    assert!(w.audit(&audit).await.unwrap());

    let args = FinishArgs {
        outcome: "done",
        prompt_tokens: 3,
        completion_tokens: 2,
        usage_source: UsageSource::Estimated,
        error_code: "",
        error_message: "",
        dead_letter: false,
        audit: None,
        citations: None,
    };
    let end = w.finish(&args).await.unwrap();
    assert!(end.is_some());
    w.rewind();
    assert_eq!(w.finish(&args).await.unwrap(), end, "a resent finish answers ok with the same seq");
    assert_eq!(f.log_len().await, 6, "one final event");
    let hist: Vec<Bytes> = f.raw.lrange(format!("{base}:hist"), 0, -1).await.unwrap();
    assert_eq!(hist.len(), 2, "the user message and one assistant message");
    let answer = crate::payload::decode_history(&hist[1]).unwrap();
    assert_eq!(answer.text, "Hello");
    let stream_len: u64 = f.raw.xlen(&f.keys.stream).await.unwrap();
    assert_eq!(stream_len, 0, "the ended turn left the stream");
    // A write of an attempt that was resent after its end is fenced, not applied.
    assert_eq!(w.emit("late", 0, None).await.unwrap(), WriteOutcome::Fenced);
}

#[tokio::test]
async fn release_open_detach_and_quota_sent_twice_count_once() {
    let f = fixture().await;
    let base = f.keys.base.clone();
    f.enqueue("t1", "c1", "u1").await;
    let eid = f.entry_of("t1").await;
    f.store.start_turn_as(&base, "t1", &eid, "w1", "r").await.unwrap();
    let w = f.store.writer(&base, "t1", &eid, 1);
    assert!(w.release().await.unwrap());
    w.rewind();
    assert!(w.release().await.unwrap(), "a resent release answers released");
    assert_eq!(f.log_len().await, 3, "user_message, turn_started, one reset");

    let open = || f.store.open_session(&f.keys, "e", None, None, Some("conn-a"), "u1");
    open().await.unwrap();
    open().await.unwrap();
    let conns: u64 = f.raw.hlen(format!("{base}:conns")).await.unwrap();
    assert_eq!(conns, 1, "one connection, however often its open is sent");
    assert_eq!(f.store.detach(&base, "conn-a").await.unwrap(), 0);
    assert_eq!(f.store.detach(&base, "conn-a").await.unwrap(), 0);
    let detached: Option<String> = f.raw.hget(format!("{base}:meta"), "detached").await.unwrap();
    assert!(detached.is_some(), "the session counts as unwatched");

    let acquire = || f.store.quota_acquire("acme", "m1", 10, 10, 60_000, 10);
    assert_eq!(acquire().await.unwrap(), QuotaOutcome::Admitted);
    assert_eq!(acquire().await.unwrap(), QuotaOutcome::Admitted);
    let minute_keys: Vec<String> = f.raw.custom(fred::cmd!("KEYS"), vec!["*tpm*"]).await.unwrap();
    let counted: u64 = f.raw.get(&minute_keys[0]).await.unwrap();
    assert_eq!(counted, 1, "a resent acquire counts the turn once");
    let m = ["m1".to_string()];
    assert_eq!(f.store.quota_release("acme", true, &m).await.unwrap(), 1);
    assert_eq!(f.store.quota_release("acme", true, &m).await.unwrap(), 0);
    let counted: u64 = f.raw.get(&minute_keys[0]).await.unwrap();
    assert_eq!(counted, 0, "uncounted once");
}

#[tokio::test]
async fn a_session_belongs_to_the_user_who_created_it() {
    let f = fixture().await;
    assert!(matches!(f.enqueue("t1", "c1", "alice").await, EnqueueOutcome::New { .. }));
    assert_eq!(f.enqueue("t2", "c2", "mallory").await, EnqueueOutcome::Forbidden);
    let opened = f.store.open_session(&f.keys, "e", None, None, None, "mallory").await.unwrap();
    assert!(matches!(opened, Opened::Forbidden));
    let opened = f.store.open_session(&f.keys, "e", None, None, None, "*").await.unwrap();
    assert!(matches!(opened, Opened::Snapshot { .. }), "an explicit grant passes");
    let log: u64 = f.log_len().await;
    assert_eq!(log, 1, "the refused send stored nothing");
    // A shared session ('' at creation) is open to every user of its tenant.
    let shared = f.store.keys().session("acme", "s2");
    let r = f.store.enqueue_turn(&shared, "t3", &NewMessage::text("c3", "hi"), "e2", &[], "").await.unwrap();
    assert!(matches!(r, EnqueueOutcome::New { .. }));
    let opened = f.store.open_session(&shared, "e", None, None, None, "bob").await.unwrap();
    assert!(matches!(opened, Opened::Snapshot { .. }));
}

/// A `done` end with reported usage.
pub(super) fn finish_args() -> FinishArgs<'static> {
    FinishArgs {
        outcome: "done",
        prompt_tokens: 3,
        completion_tokens: 2,
        usage_source: UsageSource::Reported,
        error_code: "",
        error_message: "",
        dead_letter: false,
        audit: None,
        citations: None,
    }
}

#[tokio::test]
async fn a_turn_end_sent_twice_is_archived_once() {
    let f = fixture_with(true).await;
    let archive = f.store.archive_stream(f.keys.partition);
    let base = f.keys.base.clone();
    f.enqueue("t1", "c1", "u1").await;
    let eid = f.entry_of("t1").await;
    f.store.start_turn_as(&base, "t1", &eid, "w1", "r").await.unwrap();
    let w = f.store.writer(&base, "t1", &eid, 1);
    w.emit("Hi there", 0, None).await.unwrap();
    let end = w.finish(&finish_args()).await.unwrap();
    w.rewind();
    assert_eq!(w.finish(&finish_args()).await.unwrap(), end);
    let entries: Vec<(String, HashMap<String, String>)> = f.raw.xrange(&archive, "-", "+", None).await.unwrap();
    assert_eq!(entries.len(), 1, "one archive entry for one turn end");
    let e = &entries[0].1;
    assert_eq!(
        (e["t"].as_str(), e["o"].as_str(), e["u"].as_str(), e["a"].as_str()),
        ("t1", "done", "hello", "Hi there")
    );

    // A queued turn cancelled twice: one end, one entry.
    f.enqueue("t2", "c2", "u1").await;
    assert!(matches!(f.store.cancel_turn(&f.keys, "t2").await.unwrap(), CancelOutcome::Cancelled { .. }));
    assert!(matches!(f.store.cancel_turn(&f.keys, "t2").await.unwrap(), CancelOutcome::Ended { .. }));
    let n: u64 = f.raw.xlen(&archive).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn restore_and_erase_sent_twice_apply_once() {
    let f = fixture_with(true).await;
    let base = f.keys.base.clone();
    let msg = |role: &str, text: &str| HistoryMessage {
        v: 1,
        role: role.into(),
        turn_id: "old1".into(),
        text: text.into(),
        status: (role == "assistant").then(|| "done".into()),
        attachments: Vec::new(),
    };
    let history = [msg("user", "from the archive"), msg("assistant", "archived answer")];
    let summary = Some(("old0", "an older summary", "v1"));
    // The session was opened (and found empty) before the restore, as the gateway does.
    f.store.open_session(&f.keys, "e0", None, None, None, "u1").await.unwrap();
    assert!(f.store.restore_session(&f.keys, "r1", "u1", &history, summary).await.unwrap());
    assert!(
        f.store.restore_session(&f.keys, "r1", "u1", &history, summary).await.unwrap(),
        "a resend answers restored"
    );
    let hist: Vec<Bytes> = f.raw.lrange(format!("{base}:hist"), 0, -1).await.unwrap();
    assert_eq!(hist.len(), 2, "the history once");
    assert!(!f.store.restore_session(&f.keys, "r2", "u1", &history, None).await.unwrap(), "a live session stays");
    let Opened::Snapshot { epoch, history: got, .. } =
        f.store.open_session(&f.keys, "e9", None, None, None, "u1").await.unwrap()
    else {
        panic!("snapshot")
    };
    assert_eq!((epoch.as_str(), got.as_slice()), ("r1", &history[..]));
    let owner: Option<String> = f.raw.hget(format!("{base}:meta"), "owner").await.unwrap();
    assert_eq!(owner.as_deref(), Some("u1"), "the owner stays");
    // A restore of a session whose meta is gone too binds it to the given owner.
    let other = f.store.keys().session("acme", "s9");
    assert!(f.store.restore_session(&other, "r3", "u2", &history, None).await.unwrap());
    let owner: Option<String> = f.raw.hget(format!("{}:meta", other.base), "owner").await.unwrap();
    assert_eq!(owner.as_deref(), Some("u2"));

    // A send that must not create a missing session (it is restored first) writes nothing, twice.
    let gone = f.store.keys().session("acme", "s8");
    for _ in 0..2 {
        let r =
            f.store.enqueue_turn_if_present(&gone, "t8", &NewMessage::text("c8", "hi"), "e8", &[], "u1").await.unwrap();
        assert_eq!(r, EnqueueOutcome::Missing);
    }
    let left: Vec<String> = f.raw.custom(fred::cmd!("KEYS"), vec![format!("{}*", gone.base)]).await.unwrap();
    assert_eq!(left, Vec::<String>::new());

    // Two turns, one archived-pending entry each, then erasure twice.
    f.enqueue("t1", "c1", "u1").await;
    assert!(matches!(f.store.cancel_turn(&f.keys, "t1").await.unwrap(), CancelOutcome::Cancelled { .. }));
    f.enqueue("t2", "c2", "u1").await;
    let first = f.store.erase_session(&f.keys, 1000).await.unwrap();
    assert!(first.keys >= 6, "session and turn keys deleted: {first:?}");
    assert_eq!(first.archive_entries, 1, "the session's unarchived turn end");
    let left: Vec<String> = f.raw.custom(fred::cmd!("KEYS"), vec![format!("{base}*")]).await.unwrap();
    assert_eq!(left, Vec::<String>::new(), "no key of the session is left");
    let again = f.store.erase_session(&f.keys, 1000).await.unwrap();
    assert_eq!((again.keys, again.archive_entries), (0, 0), "a resent erasure deletes nothing more");
    assert!(again.at_ms >= first.at_ms);
}

/// The enqueue that takes its quota slot in the same call: a refusal stores nothing (not even a
/// new session), and a resent or busy send takes no second slot.
#[tokio::test]
async fn an_enqueue_with_its_quota_slot_refuses_cleanly_and_counts_each_turn_once() {
    let f = fixture().await;
    let ask = |member: &'static str, max_inflight: u64| QuotaAsk {
        tenant: "acme",
        member,
        max_inflight,
        max_per_minute: 100,
        stale_ms: 60_000,
        max_listed: 10,
    };
    let send = |keys: SessionKeys, turn: &'static str, cmid: &'static str, max_inflight: u64| {
        let store = &f.store;
        async move {
            let msg = NewMessage::text(cmid, "hello");
            store.enqueue_turn_with_quota(&keys, turn, &msg, "e1", &[], "u1", false, &ask(turn, max_inflight)).await
        }
    };
    let inflight = f.store.keys().quota_inflight("acme");
    let holders = || async { f.raw.zcard::<u64, _>(&inflight).await.unwrap() };
    assert!(matches!(send(f.keys.clone(), "t1", "c1", 1).await.unwrap(), EnqueueOutcome::New { .. }));
    assert_eq!(holders().await, 1);
    // Sent again (a client retry, under a new turn id as the gateway gives each attempt): the
    // first turn, no second slot.
    assert!(matches!(send(f.keys.clone(), "t1b", "c1", 1).await.unwrap(), EnqueueOutcome::Duplicate { .. }));
    // Another send while t1 runs: busy, no slot.
    assert!(matches!(send(f.keys.clone(), "t2", "c2", 1).await.unwrap(), EnqueueOutcome::Busy { .. }));
    assert_eq!(holders().await, 1, "a resent and a busy send take no slot");
    // A new session past the in-flight limit: refused with the holders, and nothing of it stored.
    let other = f.store.keys().session("acme", "s2");
    match send(other.clone(), "t3", "c3", 1).await.unwrap() {
        EnqueueOutcome::Quota(QuotaOutcome::InFlight { holders }) => {
            assert_eq!(holders.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["t1"]);
        }
        other => panic!("expected an in-flight refusal, got {other:?}"),
    }
    let stored: Vec<String> = f.raw.custom(fred::cmd!("KEYS"), vec![format!("{}*", other.base)]).await.unwrap();
    assert!(stored.is_empty(), "a refused send stores nothing: {stored:?}");
    assert_eq!(holders().await, 1);
    // Within the limit, the same send goes through and takes its slot.
    assert!(matches!(send(other, "t3", "c3", 2).await.unwrap(), EnqueueOutcome::New { .. }));
    assert_eq!(holders().await, 2);
}

/// On a single Redis the finish frees the turn's quota slot in its own call (the enqueue took it
/// in its own): once, however often the finish is sent, and only for the attempt that owns the
/// turn.
#[tokio::test]
async fn a_finish_frees_its_turns_quota_slot_once() {
    let f = fixture().await;
    assert!(f.store.quota_with_enqueue(), "a single Redis");
    let base = f.keys.base.clone();
    let inflight = f.store.keys().quota_inflight("acme");
    let holders = || async { f.raw.zrange::<Vec<String>, _, _, _>(&inflight, 0, -1, None, false, None, false).await };
    for (turn, cmid) in [("t1", "c1"), ("t2", "c2")] {
        let keys = if turn == "t1" { f.keys.clone() } else { f.store.keys().session("acme", "s2") };
        let member = crate::quota::Quotas::ask_member(&keys, turn);
        let ask = QuotaAsk {
            tenant: "acme",
            member: &member,
            max_inflight: 10,
            max_per_minute: 100,
            stale_ms: 60_000,
            max_listed: 10,
        };
        let msg = NewMessage::text(cmid, "hello");
        let r = f.store.enqueue_turn_with_quota(&keys, turn, &msg, "e1", &[], "u1", false, &ask).await.unwrap();
        assert!(matches!(r, EnqueueOutcome::New { .. }), "{r:?}");
    }
    assert_eq!(holders().await.unwrap().len(), 2);
    let eid = f.entry_of("t1").await;
    f.store.start_turn_as(&base, "t1", &eid, "w1", "r").await.unwrap();
    // A writer of another attempt is fenced, and frees nothing.
    let stale = f.store.writer(&base, "t1", &eid, 7);
    assert_eq!(stale.finish(&finish_args()).await.unwrap(), None);
    assert_eq!(holders().await.unwrap().len(), 2, "a fenced finish frees no slot");
    let w = f.store.writer(&base, "t1", &eid, 1);
    let end = w.finish(&finish_args()).await.unwrap();
    assert!(end.is_some());
    let left = holders().await.unwrap();
    assert_eq!(left, [crate::quota::Quotas::ask_member(&f.store.keys().session("acme", "s2"), "t2")]);
    w.rewind();
    assert_eq!(w.finish(&finish_args()).await.unwrap(), end, "a resent finish answers as the first");
    assert_eq!(holders().await.unwrap(), left, "the other turn keeps its slot");
}

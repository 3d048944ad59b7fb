//! The PostgreSQL archive with a real PostgreSQL (a private server per test, like Redis):
//! sessions come back after Redis lost them, archivers die mid-batch or lose PostgreSQL without
//! losing or doubling a turn, the conversations API is scoped to its caller, and erasure leaves
//! nothing behind.

use std::time::Duration;

use chatfleet::archive::archiver::Archiver;
use chatfleet::archive::Archive;
use chatfleet::local_postgres::LocalPostgres;
use chatfleet::protocol::ControlMsg;
use chatfleet::settings::Settings;
use chatfleet::store::FinishedTurn;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Longest a test waits for the archive to reach a state.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A test app with an archive: its own PostgreSQL, the schema, and one archiver.
struct Archived {
    app: TestApp,
    pg: LocalPostgres,
    /// The test's own handle on the archive (its own pool, apart from the archiver's).
    archive: Archive,
    archiver: Option<Archiver>,
    shutdown: CancellationToken,
}

impl Archived {
    async fn start(mut s: Settings) -> Self {
        let pg = LocalPostgres::start().await.expect("postgres starts");
        s.archive.url = pg.url();
        s.archive.block_ms = 100;
        s.archive.claim_idle_ms = 300;
        s.archive.backlog_every_ms = 100;
        s.archive.retry_max_ms = 200;
        s.archive.acquire_timeout_ms = 1000;
        s.archive.restore_timeout_ms = 300;
        let archive = Archive::new(&s.archive).unwrap();
        archive.migrate().await.expect("the schema applies");
        let app = TestApp::spawn_with(s).await;
        let mut a = Self { app, pg, archive, archiver: None, shutdown: CancellationToken::new() };
        a.start_archiver().await;
        a
    }

    async fn start_archiver(&mut self) {
        let archive = Archive::new(&self.app.settings.archive).unwrap();
        let archiver = Archiver::start(self.app.store.clone(), archive, self.shutdown.clone()).await.unwrap();
        self.archiver = Some(archiver);
    }

    async fn kill_archiver(&mut self) {
        self.archiver.take().expect("an archiver runs").kill().await;
    }

    /// Archived turns of a session: (turn id, user text, assistant text, outcome), in order.
    async fn turns(&self, tenant: &str, sid: &str) -> Vec<(String, String, Option<String>, String)> {
        sqlx::query(
            "SELECT turn_id, user_text, assistant_text, outcome FROM turns WHERE tenant = $1 AND session_id = $2 \
             ORDER BY created_ms, turn_id",
        )
        .bind(tenant)
        .bind(sid)
        .fetch_all(self.archive.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    }

    async fn total_turns(&self) -> i64 {
        sqlx::query("SELECT count(*) FROM turns").fetch_one(self.archive.pool()).await.unwrap().get(0)
    }

    /// Waits until the archive holds `n` turns in all.
    async fn until_turns(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + ARCHIVE_TIMEOUT;
        loop {
            let have = self.total_turns().await;
            if have == n {
                return;
            }
            assert!(have < n, "more turns archived ({have}) than ran ({n})");
            assert!(tokio::time::Instant::now() < deadline, "the archive holds {have} turns, not {n}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the archive streams hold `n` entries (0: the archiver acked everything).
    async fn until_backlog(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + ARCHIVE_TIMEOUT;
        loop {
            let have = self.app.store.archive_backlog().await.unwrap();
            if have == n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the archive backlog is {have}, not {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn message_count(&self, tenant: &str, sid: &str) -> i64 {
        sqlx::query("SELECT message_count FROM sessions WHERE tenant = $1 AND session_id = $2")
            .bind(tenant)
            .bind(sid)
            .fetch_one(self.archive.pool())
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for Archived {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs one turn to its end on a fresh connection; returns (turn id, answer).
async fn turn(app: &TestApp, sid: &str, prompt: &str) -> (String, String) {
    let mut c = app.client(0, sid).await;
    let (t, _) = c.send_and_ack(&uid("m"), prompt).await;
    let events = c.until_end(&t).await;
    let text = text_of(&events, &t);
    assert_eq!(text, app.expected_answer(prompt));
    (t, text)
}

#[tokio::test]
async fn after_flushall_a_session_comes_back_from_the_archive_with_its_history() {
    let a = Archived::start(test_settings()).await;
    let sid = uid("s");
    let (t1, r1) = turn(&a.app, &sid, "first question").await;
    let mut c = a.app.client(0, &sid).await;
    let (t2, _) = c.send_and_ack(&uid("m"), "second question").await;
    let r2 = text_of(&c.until_end(&t2).await, &t2);
    let (old_epoch, last) = (c.epoch(), c.last_seq().unwrap());
    drop(c);
    a.until_turns(2).await;

    // Redis forgets everything (a restart without persistence, or every key expired).
    use fred::interfaces::ClientLike as _;
    let _: () = a.app.raw().await.flushall(false).await.unwrap();

    let back = Client::connect(a.app.gateways[0], &sid, Some(old_epoch.clone()), Some(last)).await;
    assert_ne!(back.epoch(), old_epoch, "a restored session starts a new epoch");
    let Some(ControlMsg::Snapshot { messages, .. }) = &back.snapshot else { panic!("no snapshot") };
    let got: Vec<(&str, &str, &str)> =
        messages.iter().map(|m| (m.role.as_str(), m.turn_id.as_str(), m.text.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("user", t1.as_str(), "first question"),
            ("assistant", t1.as_str(), r1.as_str()),
            ("user", t2.as_str(), "second question"),
            ("assistant", t2.as_str(), r2.as_str()),
        ]
    );
    drop(back);

    // The next turn sees the restored conversation: it lands on top of it in history (what the
    // worker packs into the prompt), and in the archive.
    let (t3, r3) = turn(&a.app, &sid, "third question").await;
    let hist: Vec<(String, String)> = a.app.history(&sid).await.into_iter().map(|m| (m.turn_id, m.text)).collect();
    assert_eq!(hist.len(), 6, "{hist:?}");
    assert_eq!(hist[0], (t1.clone(), "first question".to_string()));
    assert_eq!(hist[5], (t3.clone(), r3.clone()));
    a.until_turns(3).await;
    assert_eq!(a.message_count(a.app.tenant(), &sid).await, 6);
}

#[tokio::test]
// Named for FLUSHALL so the Cluster pass of bin/test skips it: it would wipe the shared cluster.
async fn attachments_are_archived_and_come_back_after_flushall() {
    let mut s = test_settings();
    s.media.url_prefixes = vec!["https://media.example.com/u/".into()];
    let a = Archived::start(s).await;
    let sid = uid("s");
    let attachment = chatfleet::payload::Attachment {
        url: "https://media.example.com/u/cat.png".into(),
        content_type: "image/png".into(),
        size: 1234,
        name: Some("cat.png".into()),
    };
    let mut c = a.app.client(0, &sid).await;
    let frame =
        serde_json::json!({"type": "send", "client_msg_id": uid("m"), "text": "look", "attachments": [attachment]});
    c.send_raw(frame.to_string()).await;
    let t = c
        .until(|e| matches!(e.body, chatfleet::protocol::EventBody::UserMessage { .. }))
        .await
        .body
        .turn_id()
        .to_string();
    c.until_end(&t).await;
    drop(c);
    a.until_turns(1).await;

    use fred::interfaces::ClientLike as _;
    let _: () = a.app.raw().await.flushall(false).await.unwrap();
    let back = a.app.client(0, &sid).await;
    let Some(ControlMsg::Snapshot { messages, .. }) = &back.snapshot else { panic!("no snapshot") };
    assert_eq!(messages[0].attachments, vec![attachment.clone()], "the snapshot of the restored session");
    assert_eq!(a.app.history(&sid).await[0].attachments, vec![attachment], "the history the worker packs");
}

/// Lets every key of a session expire, as its TTL running out does (here in a millisecond), and
/// waits until Redis no longer has any of them.
async fn expire_session(app: &TestApp, sid: &str) {
    use fred::prelude::*;
    let base = app.session_keys(sid).base;
    let raw = app.raw().await;
    let keys = app.keys_matching(&format!("{base}*")).await;
    assert!(keys.len() >= 4, "the session has keys: {keys:?}");
    for k in &keys {
        let _: bool = raw.pexpire(k, 1, None).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + ARCHIVE_TIMEOUT;
    while !app.keys_matching(&format!("{base}*")).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the keys did not expire");
        tokio::task::yield_now().await;
    }
}

/// `POST /v1/sessions/{sid}/messages` (dev mode); returns the ack's turn id.
async fn post_send(app: &TestApp, sid: &str, text: &str) -> String {
    let body = serde_json::json!({"client_msg_id": uid("m"), "text": text});
    let r = http().post(format!("{}/v1/sessions/{sid}/messages", app.http(0))).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: serde_json::Value = r.json().await.unwrap();
    ack["turn_id"].as_str().expect("an ack with a turn id").to_string()
}

#[tokio::test]
async fn a_send_to_an_expired_session_lands_on_its_archived_history() {
    let a = Archived::start(test_settings()).await;
    // A send to a session neither Redis nor the archive has starts it, as without an archive.
    let sid = uid("s");
    let t1 = post_send(&a.app, &sid, "the first message, over HTTP").await;
    a.until_turns(1).await;
    a.until_backlog(0).await;
    let before: Vec<(String, String)> = a.app.history(&sid).await.into_iter().map(|m| (m.role, m.turn_id)).collect();
    assert_eq!(before, vec![("user".into(), t1.clone()), ("assistant".into(), t1.clone())]);

    expire_session(&a.app, &sid).await;
    // The next send restores the session before it lands: the worker's context (the history) is
    // the whole conversation, and the archive goes on with it.
    let t2 = post_send(&a.app, &sid, "a follow-up after the TTL").await;
    a.until_turns(2).await;
    let hist = a.app.history(&sid).await;
    let got: Vec<(&str, &str)> = hist.iter().map(|m| (m.role.as_str(), m.turn_id.as_str())).collect();
    assert_eq!(
        got,
        vec![("user", t1.as_str()), ("assistant", t1.as_str()), ("user", t2.as_str()), ("assistant", t2.as_str())]
    );
    assert_eq!(hist[0].text, "the first message, over HTTP");
    assert_eq!(hist[3].text, a.app.expected_answer("a follow-up after the TTL"));
    assert_eq!(a.message_count(a.app.tenant(), &sid).await, 4);
}

#[tokio::test]
async fn after_its_keys_expire_a_session_comes_back_from_the_archive() {
    let a = Archived::start(test_settings()).await;
    let sid = uid("s");
    let (t1, r1) = turn(&a.app, &sid, "a question before the weekend").await;
    a.until_turns(1).await;
    a.until_backlog(0).await;

    // The session's TTL runs out.
    expire_session(&a.app, &sid).await;

    // A new device opens it without any state of its own: the archived messages are there.
    let back = a.app.client(0, &sid).await;
    let Some(ControlMsg::Snapshot { messages, .. }) = &back.snapshot else { panic!("no snapshot") };
    let got: Vec<(&str, &str)> = messages.iter().map(|m| (m.role.as_str(), m.text.as_str())).collect();
    assert_eq!(got, vec![("user", "a question before the weekend"), ("assistant", r1.as_str())]);
    assert!(messages.iter().all(|m| m.turn_id == t1));
    drop(back);
    let (_, r2) = turn(&a.app, &sid, "and after it").await;
    assert_eq!(a.app.history(&sid).await.len(), 4, "the next turn lands on the restored history");
    assert_eq!(r2, a.app.expected_answer("and after it"));
    // The restore recreated the session's keys; the turn on top of it gave them a TTL.
    a.app.assert_every_key_expires(&sid).await;
}

#[tokio::test]
async fn an_archiver_killed_mid_batch_loses_and_doubles_nothing() {
    let mut a = Archived::start(test_settings()).await;
    // Hold the turns table so the archiver's batch stops inside its transaction.
    let mut blocker = a.archive.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE turns IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..4 {
        let sid = uid("s");
        let prompt = format!("question {i}");
        let (t, answer) = turn(&a.app, &sid, &prompt).await;
        expected.push((sid, t, prompt, answer));
    }
    // Wait until the archiver is blocked mid-batch (its INSERT waits for the lock).
    let deadline = tokio::time::Instant::now() + ARCHIVE_TIMEOUT;
    loop {
        let waiting: i64 = sqlx::query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatfleet' AND wait_event_type = 'Lock'",
        )
        .fetch_one(a.archive.pool())
        .await
        .unwrap()
        .get(0);
        if waiting > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the archiver never reached the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill_archiver().await;
    blocker.rollback().await.unwrap();

    // Another archiver takes the dead one's entries over and archives each turn once.
    a.start_archiver().await;
    a.until_turns(4).await;
    for (sid, t, prompt, answer) in &expected {
        let rows = a.turns(a.app.tenant(), sid).await;
        assert_eq!(rows, vec![(t.clone(), prompt.clone(), Some(answer.clone()), "done".to_string())]);
        assert_eq!(a.message_count(a.app.tenant(), sid).await, 2);
    }

    // A redelivery after a commit (an archiver dying between commit and ack) changes nothing.
    let sid = &expected[0].0;
    let again = FinishedTurn {
        base: a.app.session_keys(sid).base,
        tenant: a.app.tenant().into(),
        session_id: sid.clone(),
        attachments: Vec::new(),
        turn_id: expected[0].1.clone(),
        outcome: "done".into(),
        user_text: expected[0].2.clone(),
        assistant_text: Some(expected[0].3.clone()),
        user_id: Some("dev".into()),
        created_ms: 1,
        finished_ms: 2,
        prompt_tokens: 0,
        completion_tokens: 0,
        error_code: String::new(),
        error_message: String::new(),
        upstream: String::new(),
        model: String::new(),
        template: String::new(),
        summary: None,
    };
    let written = a.archive.write_batch(&[again.clone(), again]).await.unwrap();
    assert_eq!(written.inserted, 0);
    assert_eq!(a.message_count(a.app.tenant(), sid).await, 2);
    assert_eq!(a.total_turns().await, 4);
}

#[tokio::test]
async fn turns_stream_while_postgres_is_down_and_the_archive_catches_up() {
    let mut a = Archived::start(test_settings()).await;
    a.pg.stop().await;
    let mut expected = Vec::new();
    for i in 0..3 {
        let sid = uid("s");
        let prompt = format!("during the outage {i}");
        let (t, answer) = turn(&a.app, &sid, &prompt).await;
        expected.push((sid, t, prompt, answer));
    }
    assert_eq!(a.app.store.archive_backlog().await.unwrap(), 3, "the backlog waits in Redis");

    a.pg.restart().await.expect("postgres restarts");
    a.until_turns(3).await;
    for (sid, t, prompt, answer) in &expected {
        let rows = a.turns(a.app.tenant(), sid).await;
        assert_eq!(rows, vec![(t.clone(), prompt.clone(), Some(answer.clone()), "done".to_string())]);
    }
    a.until_backlog(0).await;
    let m = a.app.metrics.render();
    assert!(m.contains("chatfleet_archive_write_errors_total"), "write errors are counted");
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Runs a turn as `token`'s holder over WebSocket; returns (turn id, answer).
async fn turn_as(app: &TestApp, token: &str, sid: &str, prompt: &str) -> (String, String) {
    let mut c = Client::connect_with_token(app.gateways[0], sid, token, TokenVia::Query).await;
    let (t, _) = c.send_and_ack(&uid("m"), prompt).await;
    let text = text_of(&c.until_end(&t).await, &t);
    assert_eq!(text, app.expected_answer(prompt));
    (t, text)
}

async fn get_json(app: &TestApp, token: &str, path: &str) -> (u16, serde_json::Value) {
    let r = http().get(format!("{}{path}", app.http(0))).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn conversations_are_listed_newest_first_paged_renamed_read_and_exported() {
    let a = Archived::start(jwt_settings()).await;
    let alice = token("acme", "alice", 600, None);
    let (s1, s2, s3) = (uid("a"), uid("b"), uid("c"));
    let (t1, r1) = turn_as(&a.app, &alice, &s1, "plan the launch party").await;
    turn_as(&a.app, &alice, &s2, "second conversation").await;
    turn_as(&a.app, &alice, &s3, "third conversation").await;
    let (t4, r4) = turn_as(&a.app, &alice, &s1, "and the guest list").await;
    a.until_turns(4).await;

    // Newest activity first: s1 had the last turn.
    let (st, page) = get_json(&a.app, &alice, "/v1/sessions?limit=2").await;
    assert_eq!(st, 200, "{page}");
    let ids: Vec<&str> = page["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![s1.as_str(), s3.as_str()]);
    assert_eq!(page["sessions"][0]["title"], "plan the launch party");
    assert_eq!(page["sessions"][0]["message_count"], 4);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = get_json(&a.app, &alice, &format!("/v1/sessions?limit=2&cursor={cursor}")).await;
    let ids: Vec<&str> = rest["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![s2.as_str()]);
    assert!(rest.get("next_cursor").is_none());

    // Messages, a turn per page, newest page first, oldest first within a page.
    let (st, newest) = get_json(&a.app, &alice, &format!("/v1/sessions/{s1}/messages?limit=1")).await;
    assert_eq!(st, 200);
    let texts: Vec<&str> = newest["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["and the guest list", r4.as_str()]);
    assert_eq!(newest["messages"][1]["turn_id"], t4.as_str());
    let before = newest["before"].as_str().unwrap().to_string();
    let (_, older) = get_json(&a.app, &alice, &format!("/v1/sessions/{s1}/messages?limit=1&before={before}")).await;
    let texts: Vec<&str> = older["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["plan the launch party", r1.as_str()]);
    assert_eq!(older["messages"][0]["turn_id"], t1.as_str());
    assert!(older.get("before").is_none(), "no cursor after the first page: {older}");

    // Renamed by its owner; a bad title is refused and changes nothing.
    let url = format!("{}/v1/sessions/{s1}", a.app.http(0));
    let r = http().patch(&url).bearer_auth(&alice).json(&serde_json::json!({"title": "Launch"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http().patch(&url).bearer_auth(&alice).json(&serde_json::json!({"title": "  "})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http().patch(&url).bearer_auth(&alice).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let (_, page) = get_json(&a.app, &alice, "/v1/sessions").await;
    assert_eq!(page["sessions"][0]["title"], "Launch");
    assert_eq!(page["sessions"][0]["title_source"], "user");

    // The export holds every conversation with every message.
    let (st, export) = get_json(&a.app, &alice, "/v1/export").await;
    assert_eq!(st, 200);
    assert_eq!(export["user"], "alice");
    assert_eq!(export["truncated"], false);
    let sessions = export["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    let first = sessions.iter().find(|s| s["id"] == s1.as_str()).unwrap();
    let texts: Vec<&str> = first["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["plan the launch party", r1.as_str(), "and the guest list", r4.as_str()]);
}

#[tokio::test]
async fn another_user_or_tenant_cannot_list_read_rename_delete_or_restore_after_flushall() {
    let a = Archived::start(jwt_settings()).await;
    let alice = token("acme", "alice", 600, None);
    let bob = token("acme", "bob", 600, None);
    let mallory = token("globex", "alice", 600, None);
    let sid = uid("private");
    let (_, answer) = turn_as(&a.app, &alice, &sid, "the secret launch date").await;
    a.until_turns(1).await;

    for intruder in [&bob, &mallory] {
        let (st, list) = get_json(&a.app, intruder, "/v1/sessions").await;
        assert_eq!(st, 200);
        assert_eq!(list["sessions"], serde_json::json!([]), "nothing listed");
        let (st, body) = get_json(&a.app, intruder, &format!("/v1/sessions/{sid}/messages")).await;
        assert_eq!(st, 404, "{body}");
        let url = format!("{}/v1/sessions/{sid}", a.app.http(0));
        let r = http().patch(&url).bearer_auth(intruder).json(&serde_json::json!({"title": "mine"})).send().await;
        assert_eq!(r.unwrap().status(), 404);
        let r = http().delete(&url).bearer_auth(intruder).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let (_, export) = get_json(&a.app, intruder, "/v1/export").await;
        assert!(!export.to_string().contains("secret launch"), "{export}");
    }
    let r = http().get(format!("{}/v1/sessions", a.app.http(0))).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token, no list");

    // After Redis lost the session, bob opening its id gets an empty session, not alice's.
    use fred::interfaces::ClientLike as _;
    let _: () = a.app.raw().await.flushall(false).await.unwrap();
    let b = Client::connect_with_token(a.app.gateways[0], &sid, &bob, TokenVia::Query).await;
    let Some(ControlMsg::Snapshot { messages, .. }) = &b.snapshot else { panic!("no snapshot") };
    assert!(messages.is_empty(), "bob sees none of alice's messages: {messages:?}");
    drop(b);
    // ...while alice's is intact and comes back for her.
    let (_, page) = get_json(&a.app, &alice, &format!("/v1/sessions/{sid}/messages")).await;
    assert_eq!(page["messages"][1]["text"], answer.as_str());
}

#[tokio::test]
async fn erasure_leaves_nothing_in_redis_or_the_archive() {
    let mut a = Archived::start(jwt_settings()).await;
    let alice = token("acme", "alice", 600, None);
    let sid = uid("gone");
    turn_as(&a.app, &alice, &sid, "erase me one").await;
    turn_as(&a.app, &alice, &sid, "erase me two").await;
    a.until_turns(2).await;
    a.until_backlog(0).await;
    // A third turn finishes while no archiver runs: it waits in the archive stream.
    a.kill_archiver().await;
    turn_as(&a.app, &alice, &sid, "erase me three").await;
    let keep = uid("kept");
    turn_as(&a.app, &alice, &keep, "keep me").await;
    assert_eq!(a.app.store.archive_backlog().await.unwrap(), 2);

    let r = http().delete(format!("{}/v1/sessions/{sid}", a.app.http(0))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), 204);

    let base = a.app.store.keys().session("acme", &sid).base;
    assert_eq!(a.app.keys_matching(&format!("{base}*")).await, Vec::<String>::new(), "no Redis key left");
    assert_eq!(a.app.store.archive_backlog().await.unwrap(), 1, "only the other session's turn waits");
    assert_eq!(a.archive.rows_of("acme", &sid).await.unwrap(), (0, 0));

    // The archiver comes back and archives the backlog: the erased conversation stays erased.
    a.start_archiver().await;
    a.until_turns(1).await;
    assert_eq!(a.turns("acme", &keep).await.len(), 1);
    assert_eq!(a.archive.rows_of("acme", &sid).await.unwrap(), (0, 0));
    let (st, _) = get_json(&a.app, &alice, &format!("/v1/sessions/{sid}/messages")).await;
    assert_eq!(st, 404);

    // A turn of the session that finished before the erasure and reaches the archive late (it
    // was in an archiver's hands) is refused.
    let late = FinishedTurn {
        base,
        tenant: "acme".into(),
        session_id: sid.clone(),
        attachments: Vec::new(),
        turn_id: uid("late"),
        outcome: "done".into(),
        user_text: "erase me three".into(),
        assistant_text: Some("late answer".into()),
        user_id: Some("alice".into()),
        created_ms: 1,
        finished_ms: 2,
        prompt_tokens: 0,
        completion_tokens: 0,
        error_code: String::new(),
        error_message: String::new(),
        upstream: String::new(),
        model: String::new(),
        template: String::new(),
        summary: None,
    };
    assert_eq!(a.archive.write_batch(&[late]).await.unwrap().inserted, 0);
    assert_eq!(a.archive.rows_of("acme", &sid).await.unwrap(), (0, 0));
}

#[tokio::test]
async fn retention_deletes_conversations_idle_past_the_limit_only() {
    let a = Archived::start(test_settings()).await;
    let old = uid("old");
    turn(&a.app, &old, "an old conversation").await;
    let recent = uid("recent");
    turn(&a.app, &recent, "a recent one").await;
    a.until_turns(2).await;
    // Age one conversation by ten days.
    sqlx::query("UPDATE sessions SET last_activity_ms = last_activity_ms - 864000000 WHERE session_id = $1")
        .bind(&old)
        .execute(a.archive.pool())
        .await
        .unwrap();
    let now = sqlx::query("SELECT max(last_activity_ms) FROM sessions").fetch_one(a.archive.pool()).await.unwrap();
    let deleted = a.archive.apply_retention(7, now.get::<i64, _>(0)).await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(a.archive.rows_of(a.app.tenant(), &old).await.unwrap(), (0, 0));
    assert_eq!(a.archive.rows_of(a.app.tenant(), &recent).await.unwrap(), (1, 1));
}

//! A turn that `guard.moderation_fail_open` let go on after the moderation endpoint failed is
//! marked in its audit (`;moderation=unavailable` on the template), in Redis and in the archive,
//! whether the failed check was the user's message (before the first token) or an answer phrase
//! (after the audit was first written). A turn whose checks all answered is not marked. The
//! moderation endpoint is a real HTTP server that fails (503) on texts holding a word.

use std::time::Duration;

use axum::Json;
use chatfleet::archive::archiver::Archiver;
use chatfleet::archive::Archive;
use chatfleet::local_postgres::LocalPostgres;
use fred::prelude::*;
use serde_json::{json, Value};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::fake_llm::*;
use crate::helpers::*;

/// Answers 503 for inputs holding "BROKEN", else "not flagged".
async fn moderation() -> String {
    let app = axum::Router::new().route(
        "/v1/moderations",
        axum::routing::post(|Json(body): Json<Value>| async move {
            if body["input"].as_str().is_some_and(|t| t.contains("BROKEN")) {
                return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
            }
            Ok(Json(json!({"id": "modr-1", "model": body["model"], "results": [{"flagged": false, "categories": {}}]})))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_turn_that_went_on_unchecked_is_marked_in_its_stored_and_archived_audit() {
    let pg = LocalPostgres::start().await.expect("postgres starts");
    let hits = HitLog::default();
    let clean = || stream(events(&openai_text(&["All ", "good. ", "Really."], (3, 3)), 1));
    let script = vec![stream(events(&openai_text(&["All ", "good. ", "Then BROKEN."], (3, 3)), 1)), clean(), clean()];
    let fake = Fake::start("oa", &hits, script, clean()).await;
    let mut s = test_settings();
    let up = json!({"kind": "openai", "base_url": fake.base_v1(), "model": "gpt-test", "api_key": "sk-test"});
    s.upstreams = [("oa".to_string(), serde_json::from_value(up).unwrap())].into();
    s.routing.default = vec!["oa".into()];
    s.worker.upstream_retries = 0;
    s.guard.moderation = true;
    s.guard.moderation_url = moderation().await;
    assert!(s.guard.moderation_fail_open, "fail open is the default");
    s.archive.url = pg.url();
    s.archive.block_ms = 100;
    s.archive.acquire_timeout_ms = 1000;
    s.validate().unwrap();
    let archive = Archive::new(&s.archive).unwrap();
    archive.migrate().await.expect("the schema applies");
    let app = TestApp::spawn_with(s.clone()).await;
    let shutdown = CancellationToken::new();
    let archiver =
        Archiver::start(app.store.clone(), Archive::new(&s.archive).unwrap(), shutdown.clone()).await.unwrap();

    let marked = format!("{}{}", s.context.template_version, chatfleet::guard::UNCHECKED_MARK);
    // (the user's message, the audited template): an answer phrase that could not be checked, a
    // message that could not be checked, and a turn whose every check answered.
    let cases =
        [("hello", marked.clone()), ("a BROKEN message", marked), ("hello", s.context.template_version.clone())];
    for (message, template) in cases {
        let sid = uid("s");
        let mut c = app.client(0, &sid).await;
        let (turn, _) = c.send_and_ack(&uid("m"), message).await;
        let events = c.until_end(&turn).await;
        assert!(matches!(events.last().unwrap().body, chatfleet::protocol::EventBody::Done { .. }), "{events:?}");
        let raw = app.raw().await;
        let base = app.session_keys(&sid).base;
        let stored: String = raw.hget(format!("{base}:turn:{turn}"), "template").await.unwrap();
        assert_eq!(stored, template, "{message}: the turn in Redis");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let archived: String = loop {
            let row = sqlx::query("SELECT template FROM turns WHERE turn_id = $1")
                .bind(&turn)
                .fetch_optional(archive.pool())
                .await
                .unwrap();
            if let Some(row) = row {
                break row.get(0);
            }
            assert!(tokio::time::Instant::now() < deadline, "turn {turn} was not archived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(archived, template, "{message}: the archive row");
    }
    shutdown.cancel();
    archiver.kill().await;
}

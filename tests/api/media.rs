//! Media by reference, end to end: a message's attachments are checked against `[media]`, stored
//! with the conversation (live event, history, snapshot), and reach the upstream as URLs it
//! fetches itself. The "product's storage" is a real HTTP server that counts every request, so
//! a gateway or worker that fetched (proxied) the bytes would be caught.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chatfleet::protocol::{ControlMsg, ErrorCode, EventBody, ServerMsg};
use chatfleet::settings::Settings;
use serde_json::{json, Value};

use crate::fake_llm::*;
use crate::helpers::*;

/// A storage server: answers anything with a few PNG-ish bytes and counts the requests.
pub(crate) async fn storage() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            ([("content-type", "image/png")], vec![0x89u8, b'P', b'N', b'G'])
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/media/"), hits)
}

/// One OpenAI-kind upstream `oa` taking PNGs by URL and a plain one, `plain`, for model "plain".
pub(crate) fn settings(prefix: &str, oa: &Fake, plain: &Fake) -> Settings {
    let mut s = test_settings();
    let up = |f: &Fake, media: Value| {
        serde_json::from_value(json!({"kind": "openai", "base_url": f.base_v1(), "model": "m", "media": media}))
            .unwrap()
    };
    s.upstreams = [("oa".to_string(), up(oa, json!(["image/png"]))), ("plain".to_string(), up(plain, json!([])))]
        .into_iter()
        .collect();
    s.routing.default = vec!["oa".into()];
    s.routing.rules = vec![chatfleet::upstream::settings::RouteRule {
        model: Some("plain".into()),
        chain: vec!["plain".into()],
        ..Default::default()
    }];
    s.worker.upstream_retries = 0;
    s.media.url_prefixes = vec![prefix.to_string()];
    s.media.content_types = vec!["image/png".into(), "image/jpeg".into()];
    s.media.max_bytes = 1_000_000;
    s.validate().expect("valid test settings");
    s
}

fn attachment(url: &str, ct: &str, size: u64) -> Value {
    json!({"url": url, "content_type": ct, "size": size, "name": "photo"})
}

/// Sends a frame and returns the ack's turn id, or the refusal's code.
async fn send(c: &mut Client, frame: Value) -> Result<String, ErrorCode> {
    c.send_raw(frame.to_string()).await;
    loop {
        match c.next().await {
            ServerMsg::Control(ControlMsg::Ack { turn_id, .. }) => return Ok(turn_id),
            ServerMsg::Control(ControlMsg::Error { code, .. }) => return Err(code),
            _ => {}
        }
    }
}

fn send_frame(text: &str, attachments: Value, model: Option<&str>) -> Value {
    let mut f = json!({"type": "send", "client_msg_id": uid("m"), "text": text, "attachments": attachments});
    if let Some(m) = model {
        f["model"] = json!(m);
    }
    f
}

#[tokio::test]
async fn an_attachment_reaches_the_upstream_by_url_and_stays_with_the_conversation() {
    let (prefix, fetched) = storage().await;
    let hits = HitLog::default();
    let oa = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["A ", "cat."], (3, 2)), 1))).await;
    let plain = Fake::start("plain", &hits, vec![], stream(events(&openai_text(&["Noted."], (3, 1)), 1))).await;
    let app = TestApp::spawn_with(settings(&prefix, &oa, &plain)).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    // The client names the storage with different case; the stored reference is the checked,
    // normalised URL.
    let url = format!("{prefix}cat%20one.png");
    let sent_url = url.replace("http://", "HTTP://");
    let turn =
        send(&mut c, send_frame("what is this?", json!([attachment(&sent_url, "Image/PNG", 4)]), None)).await.unwrap();
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), "A cat.");

    let stored = json!([{"url": url, "content_type": "image/png", "size": 4, "name": "photo"}]);
    let live = events.iter().find_map(|e| match &e.body {
        EventBody::UserMessage { attachments, .. } => Some(serde_json::to_value(attachments).unwrap()),
        _ => None,
    });
    assert_eq!(live, Some(stored.clone()), "the live user_message event carries the reference");
    let body = &oa.bodies()[0];
    assert_eq!(
        body["messages"].as_array().unwrap().last().unwrap(),
        &json!({"role": "user", "content": [{"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}}]})
    );

    // A later turn on an upstream that takes no media sees the earlier image as a line of text.
    let turn2 = send(&mut c, send_frame("thanks", json!([]), Some("plain"))).await.unwrap();
    c.until_end(&turn2).await;
    let msgs = plain.bodies()[0]["messages"].clone();
    assert_eq!(
        msgs[0],
        json!({"role": "user", "content": format!("what is this?\n[attachment photo (image/png, 4 bytes): {url}]")})
    );
    assert_eq!(msgs[2], json!({"role": "user", "content": "thanks"}));

    // History and a fresh client's snapshot keep it.
    let history = app.history(&sid).await;
    assert_eq!(serde_json::to_value(&history[0].attachments).unwrap(), stored);
    let fresh = app.client(0, &sid).await;
    let Some(ControlMsg::Snapshot { messages, .. }) = &fresh.snapshot else { panic!("a new client gets a snapshot") };
    assert_eq!(serde_json::to_value(&messages[0].attachments).unwrap(), stored);
    assert!(messages[2].attachments.is_empty());

    assert_eq!(fetched.load(Ordering::SeqCst), 0, "no part of chatfleet fetched the media");
}

#[tokio::test]
async fn attachments_outside_the_limits_are_refused_and_nothing_is_stored() {
    let (prefix, fetched) = storage().await;
    let hits = HitLog::default();
    let oa = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["ok"], (1, 1)), 1))).await;
    let plain = Fake::start("plain", &hits, vec![], stream(events(&openai_text(&["ok"], (1, 1)), 1))).await;
    let app = TestApp::spawn_with(settings(&prefix, &oa, &plain)).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let good = format!("{prefix}a.png");
    let host = prefix.trim_end_matches("/media/");
    let cases = [
        (json!([attachment("https://elsewhere.test/media/a.png", "image/png", 4)]), ErrorCode::BadRequest),
        (json!([attachment(&format!("{host}.evil.test/media/a.png"), "image/png", 4)]), ErrorCode::BadRequest),
        (json!([attachment(&format!("{prefix}../secret.png"), "image/png", 4)]), ErrorCode::BadRequest),
        (json!([attachment("data:image/png;base64,iVBORw0K", "image/png", 4)]), ErrorCode::BadRequest),
        (json!([attachment(&good, "text/html", 4)]), ErrorCode::BadRequest),
        (json!([attachment(&good, "image/png", 2_000_000)]), ErrorCode::TooLarge),
        (json!((0..5).map(|_| attachment(&good, "image/png", 4)).collect::<Vec<_>>()), ErrorCode::TooLarge),
        (json!([{"url": good, "size": 4}]), ErrorCode::BadRequest),
    ];
    for (attachments, code) in cases {
        let r = send(&mut c, send_frame("look", attachments.clone(), None)).await;
        assert_eq!(r, Err(code), "{attachments}");
    }
    assert!(app.history(&sid).await.is_empty(), "a refused send stores nothing");
    assert!(oa.bodies().is_empty());

    // The REST send takes attachments too (a size not declared is stored as 0), and the
    // connection that was refused still works.
    let token_free = reqwest::Client::new();
    let undeclared = json!({"url": format!("{prefix}b.png"), "content_type": "image/png"});
    let resp = token_free
        .post(format!("{}/v1/sessions/{sid}/messages", app.http(0)))
        .json(&json!({"client_msg_id": uid("m"), "text": "and this?",
            "attachments": [attachment(&good, "image/jpeg", 9), undeclared]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let ack: Value = resp.json().await.unwrap();
    let turn = ack["turn_id"].as_str().unwrap().to_string();
    c.until_end(&turn).await;
    let history = app.history(&sid).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].attachments[0].content_type, "image/jpeg");
    assert_eq!((history[0].attachments[1].content_type.as_str(), history[0].attachments[1].size), ("image/png", 0));
    assert_eq!(fetched.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn attachments_are_refused_while_media_is_off() {
    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    let r =
        send(&mut c, send_frame("look", json!([attachment("https://media.example.com/a.png", "image/png", 4)]), None))
            .await;
    assert_eq!(r, Err(ErrorCode::BadRequest));
    let (turn, _) = c.send_and_ack(&uid("m"), "hello").await;
    let events = c.until_end(&turn).await;
    assert_eq!(text_of(&events, &turn), app.expected_answer("hello"));
}

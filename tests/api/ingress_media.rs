//! Attachments through the OpenAI Chat Completions and AI SDK ingresses: `image_url` parts and AI
//! SDK `file` parts become references checked against `[media]`, stored with the conversation and
//! passed to an OpenAI-wire upstream as image parts. Refusals are 400s in the ingress's error
//! shape and store nothing. The storage server counts requests: no part of chatfleet fetches.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::fake_llm::*;
use crate::helpers::*;
use crate::media::{settings, storage};

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(FRAME_TIMEOUT).build().unwrap()
}

fn img(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url, "detail": "low"}})
}

async fn chat(app: &TestApp, body: &Value) -> reqwest::Response {
    http().post(format!("{}/v1/chat/completions", app.http(0))).json(&body).send().await.unwrap()
}

/// Waits until `session`'s history holds an assistant message, and returns the history.
async fn answered(app: &TestApp, session: &str) -> Vec<chatfleet::payload::HistoryMessage> {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let h = app.history(session).await;
        if h.iter().any(|m| m.role == "assistant") {
            return h;
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer stored for {session}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn openai_image_parts_reach_the_upstream_as_image_parts_and_the_last_ones_are_stored() {
    let (prefix, fetched) = storage().await;
    let hits = HitLog::default();
    let oa = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["Two ", "cats."], (3, 2)), 1))).await;
    let plain = Fake::start("plain", &hits, vec![], stream(events(&openai_text(&["-"], (1, 1)), 1))).await;
    let app = TestApp::spawn_with(settings(&prefix, &oa, &plain)).await;
    let (a, b) = (format!("{prefix}a.png"), format!("{prefix}b.PNG"));
    let resp = chat(
        &app,
        &json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "this one"}, img(&a)]},
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": [{"type": "text", "text": "and this?"}, img(&b)]}
        ]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["x-chatfleet-session"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Two cats.");

    let sent = &oa.bodies()[0]["messages"];
    let n = sent.as_array().unwrap().len();
    assert_eq!(
        sent[n - 3],
        json!({"role": "user", "content": [{"type": "text", "text": "this one"}, {"type": "image_url", "image_url": {"url": a}}]})
    );
    assert_eq!(sent[n - 2], json!({"role": "assistant", "content": "a cat"}));
    assert_eq!(
        sent[n - 1],
        json!({"role": "user", "content": [{"type": "text", "text": "and this?"}, {"type": "image_url", "image_url": {"url": b}}]})
    );
    let history = answered(&app, &session).await;
    assert_eq!(
        serde_json::to_value(&history[0].attachments).unwrap(),
        json!([{"url": b, "content_type": "image/png", "size": 0}])
    );
    assert_eq!(fetched.load(Ordering::SeqCst), 0, "no part of chatfleet fetched the media");
}

#[tokio::test]
async fn refused_images_are_a_400_in_each_ingress_shape_and_store_nothing() {
    let (prefix, fetched) = storage().await;
    let hits = HitLog::default();
    let oa = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["ok"], (1, 1)), 1))).await;
    let plain = Fake::start("plain", &hits, vec![], stream(events(&openai_text(&["-"], (1, 1)), 1))).await;
    let app = TestApp::spawn_with(settings(&prefix, &oa, &plain)).await;
    let good = format!("{prefix}a.png");
    let user = |parts: Vec<Value>| json!({"role": "user", "content": parts});
    let text = json!({"type": "text", "text": "look"});
    // (messages, what the refusal says, stateful: sent on a named session whose history is checked)
    let cases = [
        (vec![user(vec![text.clone(), img(&format!("{prefix}a.gif"))])], "is not accepted", true),
        (vec![user(vec![text.clone(), img("data:image/png;base64,iVBORw0K")])], "data: URLs are not accepted", true),
        (
            vec![user(vec![text.clone(), img("https://elsewhere.test/media/a.png")])],
            "outside the allowed storage",
            true,
        ),
        (vec![user((0..5).map(|_| img(&good)).chain([text.clone()]).collect())], "at most 4 attachments", true),
        // A stateless request's earlier message is held to the same limits.
        (
            vec![user(vec![text.clone(), img(&format!("{prefix}x.gif"))]), user(vec![text.clone()])],
            "is not accepted",
            false,
        ),
    ];
    for (messages, says, stateful) in cases {
        let sid = uid("s");
        let mut req = http().post(format!("{}/v1/chat/completions", app.http(0)));
        if stateful {
            req = req.header("x-chatfleet-session", &sid);
        }
        let resp = req.json(&json!({"messages": messages})).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{messages:?}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert!(app.history(&sid).await.is_empty(), "a refused request stores nothing");
    }

    // The AI SDK's file parts: a data: URL and a type not accepted are refused the same way.
    for (url, media_type) in [("data:image/png;base64,iVBORw0K", "image/png"), (good.as_str(), "application/pdf")] {
        let chat_id = uid("c");
        let body = json!({"id": chat_id, "trigger": "submit-message", "messages": [{"id": "m1", "role": "user",
            "parts": [{"type": "file", "mediaType": media_type, "url": url}, {"type": "text", "text": "look"}]}]});
        let resp = http().post(format!("{}/v1/aisdk/chat", app.http(0))).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{url} {media_type}");
        assert!(app.history(&chat_id).await.is_empty());
    }
    assert!(oa.bodies().is_empty(), "no refused request reached the upstream");
    assert_eq!(fetched.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_ai_sdk_file_part_is_stored_and_reaches_the_upstream() {
    let (prefix, fetched) = storage().await;
    let hits = HitLog::default();
    let oa = Fake::start("oa", &hits, vec![], stream(events(&openai_text(&["A ", "dog."], (3, 2)), 1))).await;
    let plain = Fake::start("plain", &hits, vec![], stream(events(&openai_text(&["-"], (1, 1)), 1))).await;
    let app = TestApp::spawn_with(settings(&prefix, &oa, &plain)).await;
    let url = format!("{prefix}dog.png");
    let chat_id = uid("c");
    let body = json!({"id": chat_id, "trigger": "submit-message", "messages": [{"id": "m1", "role": "user",
        "parts": [{"type": "file", "mediaType": "image/png", "filename": "dog.png", "url": url},
                  {"type": "text", "text": "what is it?"}]}]});
    let resp = http().post(format!("{}/v1/aisdk/chat", app.http(0))).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains(r#""type":"finish""#), "{text}");
    let history = answered(&app, &chat_id).await;
    assert_eq!(
        serde_json::to_value(&history[0].attachments).unwrap(),
        json!([{"url": url, "content_type": "image/png", "size": 0, "name": "dog.png"}])
    );
    assert_eq!(history[1].text, "A dog.");
    assert_eq!(
        oa.bodies()[0]["messages"].as_array().unwrap().last().unwrap(),
        &json!({"role": "user", "content": [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}]})
    );
    assert_eq!(fetched.load(Ordering::SeqCst), 0);
}

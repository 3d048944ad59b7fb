//! Tenant isolation, directly: the tenant comes from the token only, so naming another tenant's
//! session id reaches the caller's own (empty) session, and a token scoped to other sessions gets
//! `forbidden` and no data, on WebSocket, SSE, long-poll and POST.

use chatfleet::protocol::{ControlMsg, EventBody};
use eventsource_stream::Eventsource;
use futures::StreamExt;

use crate::helpers::*;

const SECRET_TEXT: &str = "the acme launch date";

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Opens SSE as `token`'s holder and returns the first two control frames (welcome, snapshot).
async fn sse_opening(app: &TestApp, sid: &str, token: &str) -> (ControlMsg, ControlMsg) {
    let resp = http()
        .get(format!("{}/v1/sessions/{sid}/events", app.http(0)))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = resp.bytes_stream().eventsource();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let ev = tokio::time::timeout(FRAME_TIMEOUT, events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(ev.event, "control");
        frames.push(serde_json::from_str::<ControlMsg>(&ev.data).unwrap());
    }
    let snapshot = frames.pop().unwrap();
    (frames.pop().unwrap(), snapshot)
}

#[tokio::test]
async fn another_tenants_session_is_unreachable_and_a_scoped_token_is_forbidden_on_every_transport() {
    let mut s = jwt_settings();
    s.model.demo.tokens_per_sec = 40;
    s.model.demo.max_tokens = 60;
    let app = TestApp::with(s, 1, 1).await;
    let gw = app.gateways[0];
    let sid = uid("shared");

    // acme writes into `sid`, and keeps a long answer running.
    let acme = token("acme", "alice", 600, None);
    let mut a = Client::connect_with_token(gw, &sid, &acme, TokenVia::Query).await;
    let (turn, _) = a.send_and_ack("m1", SECRET_TEXT).await;

    // globex, with an unrestricted token, names the same session id: it gets its own, new,
    // empty session on every transport, never acme's.
    let globex = token("globex", "bob", 600, None);
    let b = Client::connect_with_token(gw, &sid, &globex, TokenVia::Subprotocol).await;
    match b.snapshot.as_ref().expect("a new session starts with a snapshot") {
        ControlMsg::Snapshot { messages, active, reason, .. } => {
            assert!(messages.is_empty() && active.is_none(), "no acme data over WebSocket");
            assert_eq!(reason, "new");
        }
        other => panic!("{other:?}"),
    }
    let (_, snap) = sse_opening(&app, &sid, &globex).await;
    assert!(
        matches!(&snap, ControlMsg::Snapshot { messages, active: None, .. } if messages.is_empty()),
        "SSE: {snap:?}"
    );
    let poll = http()
        .get(format!("{}/v1/sessions/{sid}/events?after=0", app.http(0)))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);
    let body = poll.text().await.unwrap();
    assert!(!body.contains(SECRET_TEXT) && !body.contains(&turn), "long-poll leaks nothing: {body}");

    // globex cancels acme's running turn by its id, over HTTP and WebSocket: not found, and
    // acme's answer runs to `done`.
    let cancel = http()
        .post(format!("{}/v1/sessions/{sid}/turns/{turn}/cancel", app.http(0)))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(cancel).await, (404, "not_found".to_string()));
    let mut b = b;
    b.cancel(&turn).await;
    match b.next().await {
        chatfleet::protocol::ServerMsg::Control(ControlMsg::Error { code, .. }) => {
            assert_eq!(code, chatfleet::protocol::ErrorCode::NotFound)
        }
        other => panic!("{other:?}"),
    }
    let events = a.until_end(&turn).await;
    assert!(matches!(events.last().unwrap().body, EventBody::Done { .. }), "acme's turn was not touched");

    // A POST by globex into `sid` lands in globex's session; acme's history is unchanged.
    let sent = http()
        .post(format!("{}/v1/sessions/{sid}/messages", app.http(0)))
        .bearer_auth(&globex)
        .json(&serde_json::json!({"client_msg_id": "g1", "text": "globex hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let acme_hist = history_of(&app, "acme", &sid).await;
    assert_eq!(acme_hist.len(), 2, "acme's user message and answer only");
    assert!(acme_hist.iter().all(|m| m.text != "globex hello"));
    assert!(history_of(&app, "globex", &sid).await.iter().any(|m| m.text == "globex hello"));
    assert!(history_of(&app, "globex", &sid).await.iter().all(|m| m.text != SECRET_TEXT));

    // A token scoped to other sessions: forbidden, and no data, on every transport.
    let scoped = token("acme", "mallory", 600, Some(&["elsewhere"]));
    let err = ws_open(gw, &sid, Some(&scoped), TokenVia::Query).await.map(|_| ()).expect_err("refused");
    assert_eq!(handshake_refusal(err), (403, "forbidden".to_string()), "WebSocket");
    let sse = http()
        .get(format!("{}/v1/sessions/{sid}/events", app.http(0)))
        .bearer_auth(&scoped)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(sse).await, (403, "forbidden".to_string()), "SSE");
    let poll =
        http().get(format!("{}/v1/sessions/{sid}/events?after=0&token={scoped}", app.http(0))).send().await.unwrap();
    assert_eq!(refusal(poll).await, (403, "forbidden".to_string()), "long-poll");
    let post = http()
        .post(format!("{}/v1/sessions/{sid}/messages", app.http(0)))
        .bearer_auth(&scoped)
        .json(&serde_json::json!({"client_msg_id": "x1", "text": "let me in"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(post).await, (403, "forbidden".to_string()), "POST send");
    let cancel = http()
        .post(format!("{}/v1/sessions/{sid}/turns/{turn}/cancel", app.http(0)))
        .bearer_auth(&scoped)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(cancel).await, (403, "forbidden".to_string()), "POST cancel");
    assert_eq!(history_of(&app, "acme", &sid).await.len(), 2, "nothing was written by the refused calls");
}

#[tokio::test]
async fn every_key_a_session_writes_names_its_tenant() {
    let app = TestApp::with(jwt_settings(), 1, 1).await;
    let sid = uid("s");
    for tenant in ["acme", "globex"] {
        let t = token(tenant, "u", 600, None);
        let mut c = Client::connect_with_token(app.gateways[0], &sid, &t, TokenVia::Query).await;
        let (turn, _) = c.send_and_ack("m1", "hi").await;
        c.until_end(&turn).await;
    }
    let keys = app.keys_matching(&format!("{}:*:s:*", app.settings.redis.key_prefix)).await;
    assert!(!keys.is_empty());
    for k in &keys {
        assert!(k.contains(&format!(":s:acme:{sid}")) || k.contains(&format!(":s:globex:{sid}")), "{k}");
    }
    assert!(keys.iter().any(|k| k.contains(":s:acme:")) && keys.iter().any(|k| k.contains(":s:globex:")));
}

#[tokio::test]
async fn dev_mode_is_refused_on_a_non_loopback_listener() {
    let app = TestApp::with(test_settings(), 0, 0).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let g =
        chatfleet::gateway::Gateway::build(app.settings.clone(), app.store.clone(), shutdown.clone()).await.unwrap();
    // 0.0.0.0 is not loopback: dev mode (no authentication) must not serve on it.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = g.serve(listener).await.expect_err("refused");
    assert!(err.to_string().contains("auth.force_dev_on_non_loopback"), "{err}");
    // At start-up, building a gateway configured to listen there is refused, naming the setting.
    // (Workers load the same settings and do not check auth: they serve no clients.)
    let mut s = app.settings.clone();
    s.gateway.listen = "0.0.0.0:8080".parse().unwrap();
    s.validate().expect("the settings themselves are valid for a worker");
    let err = match chatfleet::gateway::Gateway::build(s, app.store.clone(), shutdown.clone()).await {
        Ok(_) => panic!("a dev-mode gateway on 0.0.0.0 was built"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("auth.mode") && err.contains("auth.force_dev_on_non_loopback"), "{err}");
    shutdown.cancel();
}

/// The decoded history of `tenant`'s session `sid`.
async fn history_of(app: &TestApp, tenant: &str, sid: &str) -> Vec<chatfleet::payload::HistoryMessage> {
    use fred::prelude::*;
    let key = format!("{}:hist", app.store.keys().session(tenant, sid).base);
    let items: Vec<bytes::Bytes> = app.raw().await.lrange(key, 0, -1).await.unwrap();
    items.iter().map(|b| chatfleet::payload::decode_history(b).unwrap()).collect()
}

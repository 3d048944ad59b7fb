//! The gateway's edge against strangers: slowloris connections are cut at the header-read
//! timeout, session opens are rate-limited per client address and per user (429 with a retry hint
//! on HTTP, `error{rate_limited}` and close 1013 on WebSocket), the token is never echoed in
//! `Sec-WebSocket-Protocol`, pages of other origins cannot drive a gateway, and listed origins get
//! CORS headers.

use std::time::Duration;

use chatfleet::protocol::{ControlMsg, ErrorCode, ServerMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A raw TCP client that sends the start of a request and then nothing more must be
/// disconnected by the gateway soon after `gateway.header_read_timeout_ms`.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let mut s = test_settings();
    s.gateway.header_read_timeout_ms = 300;
    let app = TestApp::with(s, 1, 0).await;
    let mut slow = tokio::net::TcpStream::connect(app.gateways[0]).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(app.gateways[0]).await.unwrap();

    // Meanwhile a normal request is served.
    let ok = reqwest::get(format!("{}/healthz", app.http(0))).await.unwrap();
    assert_eq!(ok.status(), 200);

    for (name, conn) in [("partial headers", &mut slow), ("no bytes at all", &mut silent)] {
        let mut rest = Vec::new();
        // Ends with EOF (or a reset) once the gateway drops the connection; a hang fails here.
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{name}: the connection was still open after 10 s");
    }
}

/// Opens the event stream of a new session as `token`'s holder: the status, `Retry-After`, and
/// the error body if refused.
async fn sse_open(app: &TestApp, token: &str, forwarded_for: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{}/events", app.http(0), uid("s")))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(f) = forwarded_for {
        req = req.header("x-forwarded-for", f);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body = if status == 200 { serde_json::Value::Null } else { resp.json().await.unwrap() };
    (status, retry, body)
}

#[tokio::test]
async fn a_user_that_opens_sessions_too_fast_gets_a_429_with_a_retry_hint_and_a_websocket_gets_1013() {
    let mut s = jwt_settings();
    s.gateway.limits.opens_per_sec_per_user = 1;
    s.gateway.limits.opens_burst = 3;
    s.gateway.limits.opens_per_sec_per_ip = 1000;
    let app = TestApp::with(s, 1, 0).await;
    let alice = token("acme", "alice", 600, None);

    // The burst: two SSE streams and a long-poll.
    for _ in 0..2 {
        assert_eq!(sse_open(&app, &alice, None).await.0, 200);
    }
    let poll = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{}/events", app.http(0), uid("s")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);

    // The next open of any kind is refused, with a hint.
    let (status, retry, body) = sse_open(&app, &alice, None).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| (1..=1000).contains(&ms)), "{body}");
    assert_eq!(retry.as_deref(), Some("1"));

    // A WebSocket is told why, then closed with 1013 (a browser sees no HTTP status).
    let (ws, _) = ws_open(app.gateways[0], &uid("s"), Some(&alice), TokenVia::Subprotocol).await.unwrap();
    let mut c = bare(ws);
    match c.next_or_close().await {
        Ok(ServerMsg::Control(ControlMsg::Error {
            code: ErrorCode::RateLimited, retry_after_ms: Some(ms), ..
        })) => {
            assert!((1..=1000).contains(&ms), "{ms}")
        }
        other => panic!("expected error{{rate_limited}}, got {other:?}"),
    }
    assert_eq!(c.next_or_close().await.unwrap_err(), Some(1013));

    // Another user on the same address is unaffected.
    let bob = token("acme", "bob", 600, None);
    assert_eq!(sse_open(&app, &bob, None).await.0, 200);
    let metrics = app.metrics.render();
    assert!(metrics.contains("chatfleet_gateway_opens_limited_total{scope=\"user\"}"), "counted by scope");
}

#[tokio::test]
async fn one_address_is_limited_across_users_and_forwarded_for_counts_only_behind_a_trusted_proxy() {
    let mut s = jwt_settings();
    s.gateway.limits.opens_per_sec_per_ip = 1;
    s.gateway.limits.opens_burst = 2;
    s.gateway.limits.opens_per_sec_per_user = 1000;
    let app = TestApp::with(s.clone(), 1, 0).await;
    let user = |n: usize| token("acme", &format!("u{n}"), 600, None);
    assert_eq!(sse_open(&app, &user(1), None).await.0, 200);
    assert_eq!(sse_open(&app, &user(2), None).await.0, 200);
    assert_eq!(sse_open(&app, &user(3), None).await.0, 429, "a third user from the same address");
    // Without a trusted proxy, X-Forwarded-For is the client's own claim and changes nothing.
    assert_eq!(sse_open(&app, &user(4), Some("198.51.100.9")).await.0, 429);
    drop(app);

    s.gateway.limits.trusted_proxy_hops = 1;
    let app = TestApp::with(s, 1, 0).await;
    // Behind one proxy: the last entry is the address the proxy saw; the rest is the client's claim.
    for n in 0..2 {
        assert_eq!(sse_open(&app, &user(n), Some("6.6.6.6, 198.51.100.1")).await.0, 200);
    }
    assert_eq!(sse_open(&app, &user(2), Some("7.7.7.7, 198.51.100.1")).await.0, 429, "a forged first entry");
    assert_eq!(sse_open(&app, &user(3), Some("198.51.100.2")).await.0, 200, "another client of the proxy");
}

#[tokio::test]
async fn the_websocket_echoes_only_the_protocol_name_never_the_token() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = TestApp::with(jwt_settings(), 1, 0).await;
    let t = token("acme", "alice", 600, None);
    let url = format!("ws://{}/v1/ws?session_id={}", app.gateways[0], uid("s"));
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", format!("bearer.{t}, chatfleet.v1").parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chatfleet.v1");

    // Offering only the bearer entry: echoing it would put the token in a response header, and
    // echoing nothing fails a browser's handshake without a word. Refused, saying what to do.
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", format!("bearer.{t}").parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.map(|_| ()).expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 400);
            assert!(resp.headers().get("sec-websocket-protocol").is_none());
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("chatfleet.v1") && !body.contains(&t), "{body}");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_page_of_another_origin_cannot_drive_a_dev_gateway() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = TestApp::with(test_settings(), 1, 1).await;
    let gw = app.gateways[0];
    let sid = uid("s");
    let foreign = "https://evil.example";

    // WebSocket handshake from a foreign page.
    let mut req = format!("ws://{gw}/v1/ws?session_id={sid}").into_client_request().unwrap();
    req.headers_mut().insert("origin", foreign.parse().unwrap());
    let (status, code) = handshake_refusal(tokio_tungstenite::connect_async(req).await.map(|_| ()).unwrap_err());
    assert_eq!((status, code.as_str()), (403, "forbidden"));

    // A "simple" text/plain POST (no preflight) from a foreign page: refused, nothing stored.
    let body = r#"{"client_msg_id":"m1","text":"spend their tokens"}"#;
    let post = reqwest::Client::new()
        .post(format!("{}/v1/sessions/{sid}/messages", app.http(0)))
        .header("origin", foreign)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(post).await, (403, "forbidden".to_string()));
    assert!(app.keys_matching(&format!("{}*{sid}*", app.settings.redis.key_prefix)).await.is_empty(), "no session");

    // DNS rebinding: the foreign name resolves to 127.0.0.1, so Origin and Host agree.
    let rebound = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{sid}/events", app.http(0)))
        .header("host", "evil.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(rebound).await, (403, "forbidden".to_string()));

    // The gateway's own page (Origin = the Host it was sent to) is served.
    let own = reqwest::Client::new()
        .post(format!("{}/v1/sessions/{sid}/messages", app.http(0)))
        .header("origin", app.http(0))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "{}", own.text().await.unwrap());
}

#[tokio::test]
async fn listed_origins_get_cors_headers_and_others_get_none() {
    let mut s = test_settings();
    s.gateway.allowed_origins = vec!["http://localhost:5173".into()];
    let app = TestApp::with(s, 1, 0).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions/{}/messages", app.http(0), uid("s"));
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let ok = preflight("http://localhost:5173").await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "http://localhost:5173");
    let allowed = ok.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    let other = preflight("http://localhost:6666").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let script = http.get(format!("{}/chatfleet.js", app.http(0))).header("origin", "http://localhost:5173");
    let script = script.send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(script.headers()["access-control-allow-origin"], "http://localhost:5173");
}

/// A [`Client`] around a socket that has not said hello.
fn bare(ws: Ws) -> Client {
    Client { ws, session: String::new(), welcome: ControlMsg::Pong, snapshot: None, log: Vec::new() }
}

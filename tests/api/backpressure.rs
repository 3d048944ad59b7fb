//! Slow and dead clients, and draining: bounded queues, documented close codes, nothing lost.

use chatfleet::protocol::{ClientMsg, ControlMsg, ServerMsg};
use futures::SinkExt;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// Reads a counter from the process's Prometheus output (0 when absent).
fn counter(app: &TestApp, name: &str) -> f64 {
    app.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A WebSocket client whose socket has a tiny receive buffer, so it fills fast when unread.
async fn tiny_buffer_client(app: &TestApp, sid: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.gateways[0]).await.unwrap();
    let url = format!("ws://{}/v1/ws?session_id={sid}", app.gateways[0]);
    let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    Client::hello(ws, sid, None, None).await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_4008_without_slowing_others_and_resumes_exactly() {
    let mut s = test_settings();
    s.gateway.send_queue_bytes = 65536;
    s.gateway.send_queue_events = 64;
    // What a client that stops reading can pin in the gateway's kernel buffer: small here, so
    // the answer below is far more than the kernel holds and the queue must overflow.
    s.gateway.tcp_send_buffer_bytes = 16384;
    s.model.demo.max_tokens = 100_000; // ~600 kB
    s.model.demo.tokens_per_sec = 0;
    s.worker.max_delta_bytes = 4096;
    let app = TestApp::with(s, 1, 2).await;
    let sid = uid("s");
    let mut slow = tiny_buffer_client(&app, &sid).await;
    let mut fast = app.client(0, &sid).await;
    let before = counter(&app, "chatfleet_gateway_slow_client_closes_total");
    let prompt = "flood";
    let (turn, _) = fast.send_and_ack(&uid("m"), prompt).await;
    fast.until_end(&turn).await;
    let expected = app.expected_answer(prompt);
    assert_eq!(text_of(&fast.events(), &turn), expected, "a fast reader of the same session is unaffected");

    // The slow client's queue passed its bound: the gateway gave up on it.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while counter(&app, "chatfleet_gateway_slow_client_closes_total") <= before {
        assert!(tokio::time::Instant::now() < deadline, "the slow client was never closed");
        // Polling a condition with a deadline: the close happens inside the gateway.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Meanwhile another session streams normally.
    let mut other = app.client(0, &uid("s")).await;
    let (t2, _) = other.send_and_ack(&uid("m"), "still fast").await;
    other.until_end(&t2).await;

    // The slow client finally reads: what was buffered, then the documented close code.
    let code = loop {
        match slow.next_or_close().await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(4008));
    let got = slow.events();
    let last = got.last().map(|e| e.seq).unwrap_or(slow.welcome_seq());
    let mut r = Client::connect(app.gateways[0], &sid, Some(slow.epoch()), Some(last)).await;
    r.until_end(&turn).await;
    let mut all = got;
    all.extend(r.events());
    assert_contiguous(&all, slow.welcome_seq() + 1);
    assert_eq!(text_of(&all, &turn), expected);
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_4000() {
    let mut s = test_settings();
    s.gateway.ping_interval_ms = 100;
    s.gateway.pong_timeout_ms = 300;
    let app = TestApp::spawn_with(s).await;
    let mut c = app.client(0, &uid("s")).await;
    // Stop speaking WebSocket: read raw bytes, so nothing answers the server's pings.
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() else { unreachable!("plain TCP") };
    let mut bytes = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, tcp.read_to_end(&mut bytes)).await.expect("the server closes").unwrap();
    // An unmasked close frame (0x88) with a 2-byte code 4000 (0x0FA0) and a reason.
    let close = bytes.windows(4).any(|w| w[0] == 0x88 && w[2] == 0x0F && w[3] == 0xA0);
    assert!(close, "close 4000 in {:02x?}", &bytes[bytes.len().saturating_sub(64)..]);
}

#[tokio::test]
async fn a_draining_gateway_tells_clients_to_reconnect_and_they_resume_on_another() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 200;
    s.model.demo.tokens_per_sec = 300;
    let app = TestApp::with(s, 2, 1).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let prompt = "drain during this";
    let (turn, _) = c.send_and_ack(&uid("m"), prompt).await;
    c.until(|e| matches!(e.body, chatfleet::protocol::EventBody::Delta { .. })).await;
    app.gateway_tokens[0].cancel();
    let code = loop {
        match c.next_or_close().await {
            Ok(ServerMsg::Control(ControlMsg::Reconnect { reason })) => assert_eq!(reason, "draining"),
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1012));
    assert!(
        c.log.iter().any(|m| matches!(m, ServerMsg::Control(ControlMsg::Reconnect { .. }))),
        "reconnect came before the close"
    );
    let got = c.events();
    let mut r = Client::connect(app.gateways[1], &sid, Some(c.epoch()), got.last().map(|e| e.seq)).await;
    r.until_end(&turn).await;
    let mut all = got;
    all.extend(r.events());
    assert_contiguous(&all, c.welcome_seq() + 1);
    assert_eq!(text_of(&all, &turn), app.expected_answer(prompt));
}

#[tokio::test]
async fn a_frame_over_the_size_limit_is_refused_before_it_is_buffered() {
    let mut s = test_settings();
    s.gateway.max_frame_bytes = 40_000;
    s.session.max_message_bytes = 30_000;
    let app = TestApp::spawn_with(s).await;
    let sid = uid("s");
    let mut c = app.client(0, &sid).await;
    let refused = r#"chatfleet_gateway_rejected_total{code="too_large"}"#;
    let before = counter(&app, refused);
    let send =
        ClientMsg::Send { client_msg_id: "m1".into(), text: "x".repeat(100_000), model: None, attachments: Vec::new() };
    let _ = c.ws.send(Message::Text(serde_json::to_string(&send).unwrap().into())).await;
    // The gateway refuses the frame from its header and closes (1009). The payload is never read,
    // so the peer may see a TCP reset instead of the close frame.
    let code = loop {
        match c.next_or_close().await {
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert!(matches!(code, Some(1009) | None), "closed with {code:?}");
    assert!(counter(&app, refused) > before, "the refusal was counted as too_large");
    assert!(app.history(&sid).await.is_empty(), "nothing was stored");
    // The gateway still serves others.
    let mut other = app.client(0, &uid("s")).await;
    let (t, _) = other.send_and_ack(&uid("m"), "fine").await;
    other.until_end(&t).await;
}

#[tokio::test]
async fn an_idle_socket_is_told_to_reconnect_when_its_gateway_drains() {
    // No turn runs, so no event wakes the connection: only the drain itself must reach it.
    let app = TestApp::spawn().await;
    let mut c = app.client(0, &uid("s")).await;
    app.gateway_tokens[0].cancel();
    let first = c.next_or_close().await;
    assert!(
        matches!(&first, Ok(ServerMsg::Control(ControlMsg::Reconnect { reason })) if reason == "draining"),
        "{first:?}"
    );
    assert_eq!(c.next_or_close().await.err(), Some(Some(1012)));
}

#[tokio::test]
async fn a_coalescing_client_gets_merged_deltas_every_token_once_and_the_last_window_on_time() {
    let mut s = test_settings();
    s.model.demo.max_tokens = 120;
    s.model.demo.tokens_per_sec = 400;
    let app = TestApp::spawn_with(s).await;
    let sid = uid("s");
    let url = format!("ws://{}/v1/ws?session_id={sid}", app.gateways[0]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
    let hello = ClientMsg::Hello { session_id: sid.clone(), last_seq: None, epoch: None, coalesce_ms: Some(150) };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.unwrap();
    let mut c = Client { ws, session: sid, welcome: ControlMsg::Pong, snapshot: None, log: Vec::new() };
    match c.next().await {
        ServerMsg::Control(w @ ControlMsg::Welcome { .. }) => c.welcome = w,
        other => panic!("expected welcome, got {other:?}"),
    }
    let prompt = "coalesce this answer";
    let (turn, user_seq) = c.send_and_ack(&uid("m"), prompt).await;
    // The turn's terminal event is the last of a window: it arrives only when the window's own
    // timer closes it, since no event follows to wake the connection.
    let events = c.until_end(&turn).await;
    let all = c.events();
    assert_contiguous(&all, user_seq);
    assert_eq!(text_of(&events, &turn), app.expected_answer(prompt));
    let merged = events.iter().filter(|e| e.first_seq.is_some_and(|f| f < e.seq)).count();
    let seqs = events.last().unwrap().seq - events[0].first_seq.unwrap_or(events[0].seq) + 1;
    assert!(merged > 0 && (events.len() as u64) < seqs, "{} frames for {seqs} events, {merged} merged", events.len());
}

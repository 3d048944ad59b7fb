//! The opening-slot bound (`gateway.max_opening_connections`): a connection waits for a slot
//! before it is served, a WebSocket keeps its slot until `welcome`, and any other request frees
//! it with its response, even when its connection stays open.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn with_one_opening_slot_connections_are_served_one_opening_at_a_time() {
    let mut s = test_settings();
    s.gateway.max_opening_connections = 1;
    let app = TestApp::with(s, 1, 0).await;
    let addr = app.gateways[0];

    // A: upgraded, but no hello yet, so it still holds the only slot.
    let a_sid = uid("a");
    let (a, _) = ws_open(addr, &a_sid, None, TokenVia::Query).await.expect("first upgrade");
    let b_sid = uid("b");
    let mut b = tokio::spawn(async move { Client::connect(addr, &b_sid, None, None).await });
    // B's connection is accepted but not served: its handshake cannot finish while A opens.
    // (A bounded wait for something that must not happen; served, B takes a few milliseconds.)
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut b).await.is_err(),
        "a second connection was served while the only opening slot was taken"
    );
    let a = Client::hello(a, &a_sid, None, None).await;
    let b = b.await.expect("B's task").welcome;
    assert!(matches!(b, chatfleet::protocol::ControlMsg::Welcome { .. }));

    // A plain request frees its slot with its response; its keep-alive connection stays open.
    let http = reqwest::Client::new();
    let r = http.get(format!("http://{addr}/no-such-route")).send().await.expect("a response");
    assert_eq!(r.status(), 404);
    let c = tokio::time::timeout(FRAME_TIMEOUT, Client::connect(addr, &uid("c"), None, None))
        .await
        .expect("a connect after an answered request is served");
    drop((a, c, http));
}

//! Ingress overhead benchmark: time to first token through the OpenAI Chat Completions and AI SDK
//! ingresses against protocol v1 on a WebSocket.
//!
//! Starts a private Redis, one gateway and one worker (demo model answering at once, no
//! first-token delay), then runs N turns per case, the cases interleaved turn by turn so that they
//! share the machine's noise:
//! - `v1 websocket`: a socket already open and `hello`'d on a new session (a v1 client's steady
//!   state); from writing `send` to reading the first `delta`;
//! - `openai stream`: a new stateless `POST /v1/chat/completions` (`stream: true`) on a kept-alive
//!   HTTP connection; from sending the request to reading the first content chunk;
//! - `aisdk stream`: a `POST /v1/aisdk/chat` on a new chat; to the first `text-delta`.
//!
//! The difference of the medians is what the ingress adds: parsing the request, sending the turn,
//! and opening the session feed that v1 clients opened before they sent.
//!
//! Run: `cargo run --release --example ingress_ttft -- [TURNS]` (default 300 per case).

use std::time::Instant;

use chatfleet::protocol::{ClientMsg, EventBody, ServerMsg};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use ws::{next, send, FRAME_TIMEOUT};

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/ws.rs"]
mod ws;

/// v1: the socket is open and the session said hello before the clock starts.
async fn v1(addr: std::net::SocketAddr, i: usize) -> f64 {
    let sid = format!("v1-{i}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?session_id={sid}")).await.unwrap();
    send(&mut ws, &ClientMsg::Hello { session_id: sid, last_seq: None, epoch: None, coalesce_ms: None }).await;
    next(&mut ws).await; // welcome
    next(&mut ws).await; // snapshot of the new session
    let t0 = Instant::now();
    send(
        &mut ws,
        &ClientMsg::Send { client_msg_id: "m".into(), text: "hi".into(), model: None, attachments: Vec::new() },
    )
    .await;
    loop {
        if let ServerMsg::Event(e) = next(&mut ws).await {
            if matches!(e.body, EventBody::Delta { .. }) {
                return t0.elapsed().as_secs_f64() * 1000.0;
            }
        }
    }
}

/// An SSE POST: from sending it to the first event whose data contains `marker`.
async fn sse(http: &reqwest::Client, url: String, body: serde_json::Value, marker: &str) -> f64 {
    let t0 = Instant::now();
    let resp = http.post(url).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut events = resp.bytes_stream().eventsource();
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(FRAME_TIMEOUT, events.next()).await.expect("event in time");
        let ev = ev.unwrap_or_else(|| panic!("the stream ended before {marker:?}: {seen:?}")).unwrap();
        if ev.data.contains(marker) {
            return t0.elapsed().as_secs_f64() * 1000.0;
        }
        seen.push(ev.data);
    }
}

fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize];
    [q(0.5), q(0.9), q(0.99)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let turns: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(300);
    let mut s = chatfleet::settings::Settings::defaults();
    s.redis.partitions = 8;
    s.model.demo.ttft_ms = 0;
    s.model.demo.tokens_per_sec = 0;
    s.model.demo.max_tokens = 5;
    let fleet = fleet::Fleet::start(s).await?;
    let addr = fleet.addr;
    let http = reqwest::Client::builder().timeout(FRAME_TIMEOUT).build()?;

    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let warmup = 20;
    for i in 0..turns + warmup {
        let x = v1(addr, i).await;
        let body = serde_json::json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let y = sse(&http, format!("http://{addr}/v1/chat/completions"), body, "\"delta\":{\"content\":\"").await;
        let body = serde_json::json!({"id": format!("chat-{i}"), "trigger": "submit-message",
            "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]});
        let z = sse(&http, format!("http://{addr}/v1/aisdk/chat"), body, "text-delta").await;
        if i >= warmup {
            a.push(x);
            b.push(y);
            c.push(z);
        }
    }
    println!("time to first token, demo model with no delay, {turns} turns per case (ms)");
    let base = quantiles(a.clone());
    for (name, v) in [("v1 websocket", a), ("openai stream", b), ("aisdk stream", c)] {
        let q = quantiles(v);
        println!(
            "{name:<14} p50={:>6.3}  p90={:>6.3}  p99={:>6.3}   p50 over v1: {:+.3}",
            q[0],
            q[1],
            q[2],
            q[0] - base[0]
        );
    }
    fleet.stop().await;
    Ok(())
}

//! Stop latency benchmark: how fast a stop reaches the upstream.
//!
//! Starts a private Redis, one gateway and one worker (demo model), then for each of N turns
//! sends a message, waits until it streams (or, in the silent case, until the turn started with a
//! silent model), sends `cancel`, and measures until the `cancelled` event arrives. The worker
//! drops the upstream stream before it writes `cancelled`, so this client-observed time is an
//! upper bound on stop-to-abort. The worker's own `chatfleet_worker_cancel_seconds` (stop learned
//! → stream dropped) is printed from its histogram.
//!
//! Run: `cargo run --release --example stop_latency -- [TURNS]` (default 200 per case).

use std::time::Instant;

use chatfleet::protocol::{ClientMsg, ControlMsg, EventBody, ServerMsg};
use ws::{next, send};

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/ws.rs"]
mod ws;

/// One case: `turns` turns, stopped once `ready` says so; returns client-observed latencies (ms).
async fn case(addr: std::net::SocketAddr, turns: usize, prompt: &str, wait_for_delta: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(turns);
    for i in 0..turns {
        let sid = format!("stop{}{i}", if wait_for_delta { "f" } else { "s" });
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?session_id={sid}")).await.unwrap();
        send(&mut ws, &ClientMsg::Hello { session_id: sid.clone(), last_seq: None, epoch: None, coalesce_ms: None })
            .await;
        send(
            &mut ws,
            &ClientMsg::Send {
                client_msg_id: format!("m{i}"),
                text: prompt.into(),
                model: None,
                attachments: Vec::new(),
            },
        )
        .await;
        let turn = loop {
            if let ServerMsg::Event(e) = next(&mut ws).await {
                let ready = if wait_for_delta {
                    matches!(e.body, EventBody::Delta { .. })
                } else {
                    matches!(e.body, EventBody::TurnStarted { .. })
                };
                if ready {
                    break e.body.turn_id().to_string();
                }
            }
        };
        let asked = Instant::now();
        send(&mut ws, &ClientMsg::Cancel { turn_id: turn.clone() }).await;
        loop {
            match next(&mut ws).await {
                ServerMsg::Event(e) if e.body.turn_id() == turn && e.body.is_terminal() => {
                    assert!(matches!(e.body, EventBody::Cancelled { .. }), "{:?}", e.body);
                    out.push(asked.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                ServerMsg::Control(ControlMsg::Error { message, .. }) => panic!("refused: {message}"),
                _ => {}
            }
        }
    }
    out
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize];
    println!(
        "{name:<32} n={:<5} p50={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        v.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let turns: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200);
    let mut s = chatfleet::settings::Settings::defaults();
    s.redis.partitions = 8;
    s.model.demo.ttft_ms = 0;
    s.model.demo.tokens_per_sec = 50;
    s.model.demo.max_tokens = 10_000;
    let handle = chatfleet::metrics::install();
    let fleet = fleet::Fleet::start(s).await?;
    let addr = fleet.addr;

    println!("stop latency, client `cancel` sent → `cancelled` received (upper bound on stop → upstream abort)");
    summary("while tokens flow (50 tok/s)", case(addr, turns, "stop me while streaming", true).await);
    summary("while the model is silent", case(addr, turns, "[[silent-ms=600000]] stop me while silent", false).await);
    let text = handle.render();
    let sum: f64 =
        text.lines().find_map(|l| l.strip_prefix("chatfleet_worker_cancel_seconds_sum ")?.parse().ok()).unwrap_or(0.0);
    let count: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("chatfleet_worker_cancel_seconds_count ")?.parse().ok())
        .unwrap_or(0.0);
    println!(
        "worker: stop learned → upstream stream dropped: mean {:.3} ms over {count} stops",
        sum / count.max(1.0) * 1000.0
    );
    fleet.stop().await;
    Ok(())
}

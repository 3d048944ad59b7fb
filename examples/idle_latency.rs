//! Latency at idle: where the milliseconds of one send go, with nothing else running.
//!
//! Starts a private Redis, one gateway and one worker in one process (demo model answering at
//! once: no first-token delay, no pacing), and sends N turns one after another on protocol v1
//! WebSockets, each after the last one ended, on a new session every K turns (default 1: a new
//! conversation's first turn). The client times send → `ack`, send →
//! `turn_started` and send → first `delta`; the server's own stage histograms (read from this
//! process's metrics recorder) and Redis's `INFO commandstats` say where that time went:
//!
//! - gateway: `send` read → `ack` written (the quota call and the enqueue, one round trip each);
//! - queue wait: the enqueue's Redis time → the start's (the worker's stream read wakes, the
//!   turn is dispatched, `start` runs);
//! - session load: the worker's `start` call and context packing;
//! - fleet overhead: enqueue → first delta stored, minus the model's time to first token;
//! - Redis: time inside FCALL per call, and a PING round trip for scale, timed twice: from the
//!   client's runtime (as another process would see it) and from a task of the fleet's runtime
//!   (as the gateway's and worker's own calls see it).
//!
//! The fleet runs on a multi-thread runtime, as `bin/chatfleet.rs` builds it; the client runs on
//! a thread of its own with a current-thread runtime, as a separate process would. (Driving the
//! client from the fleet runtime's `block_on` thread added a cross-thread wake-up to every frame
//! and every call the client made: docs/benchmarks.md, "What a Redis round trip costs".)
//!
//! Run: `cargo run --release --example idle_latency -- [TURNS] [TURNS_PER_SESSION]` (300, 1).

use std::time::Instant;

use chatfleet::protocol::{ClientMsg, ControlMsg, EventBody, ServerMsg};
use fred::interfaces::ClientLike;
use ws::{next, send};

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/ws.rs"]
mod ws;

fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize];
    [q(0.5), q(0.9), q(0.99)]
}

/// Mean of a histogram of this process's recorder, in ms (`name_sum / name_count`).
fn mean_ms(rendered: &str, name: &str) -> Option<f64> {
    let value = |suffix: &str| {
        rendered.lines().find_map(|l| {
            let rest = l.strip_prefix(&format!("{name}{suffix}"))?;
            // Unlabelled series only: `name_sum 1.23`.
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
    };
    let (sum, count) = (value("_sum")?, value("_count")?);
    (count > 0.0).then(|| sum / count * 1000.0)
}

/// `INFO commandstats` as (command, calls, µs).
async fn commandstats(c: &fred::clients::Client) -> Vec<(String, f64, f64)> {
    let info: String = c.info(Some(fred::types::InfoKind::CommandStats)).await.unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| rest.split(',').find_map(|f| f.strip_prefix(k)?.parse::<f64>().ok());
            Some((name.to_string(), field("calls=")?, field("usec=")?))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let turns: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(300);
    let per_session: usize = std::env::args().nth(2).map(|a| a.parse()).transpose()?.unwrap_or(1).max(1);
    // The fleet's runtime is the one `#[tokio::main]` builds for the binary.
    let fleet_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let fleet_handle = fleet_rt.handle().clone();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(run(turns, per_session, fleet_handle))
    });
    client.join().expect("the client thread ran")?;
    drop(fleet_rt);
    Ok(())
}

async fn run(turns: usize, per_session: usize, fleet_rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    let recorder = chatfleet::metrics::install();
    let mut s = chatfleet::settings::Settings::defaults();
    s.redis.partitions = 8;
    s.model.demo.ttft_ms = 0;
    s.model.demo.tokens_per_sec = 0;
    s.model.demo.max_tokens = 5;
    // One user sending turn after turn is far above a person's rate: lift the frame limit.
    s.gateway.limits.messages_per_sec = 1_000_000;
    s.gateway.limits.burst = 1_000_000;
    let fleet = fleet_rt.spawn(fleet::Fleet::start(s)).await??;
    let addr = fleet.addr;
    let config = fred::prelude::Config::from_url(&fleet.redis_url())?;
    let raw = fred::clients::Client::new(config.clone(), None, None, None);
    raw.init().await?;
    // A client whose connection task runs on the fleet's runtime, like the fleet's own.
    let inner = fleet_rt
        .spawn(async move {
            let c = fred::clients::Client::new(config, None, None, None);
            c.init().await.map(|_| c)
        })
        .await??;

    let mut ws = None;
    let (mut ack, mut started, mut delta, mut ping) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ping_inner = Vec::new();
    let warmup = 20;
    let mut before = Vec::new();
    for i in 0..turns + warmup {
        if i == warmup {
            before = commandstats(&raw).await;
        }
        // A new session every `per_session` turns, opened before the clock starts (its history is
        // what `start` reads and returns, so a long conversation costs more per turn).
        if i % per_session == 0 {
            let sid = format!("idle-{i}");
            let (mut s, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?session_id={sid}")).await?;
            send(&mut s, &ClientMsg::Hello { session_id: sid, last_seq: None, epoch: None, coalesce_ms: None }).await;
            next(&mut s).await; // welcome
            next(&mut s).await; // snapshot of the new session
            ws = Some(s);
        }
        let ws = ws.as_mut().expect("a session is open");
        let t = Instant::now();
        let _: String = raw.ping(None).await?;
        let rtt = t.elapsed().as_secs_f64() * 1000.0;
        let c = inner.clone();
        let rtt_inner = fleet_rt
            .spawn(async move {
                let t = Instant::now();
                let _: String = c.ping(None).await?;
                anyhow::Ok(t.elapsed().as_secs_f64() * 1000.0)
            })
            .await??;
        let t0 = Instant::now();
        let text = format!("turn {i}");
        send(ws, &ClientMsg::Send { client_msg_id: format!("m{i}"), text, model: None, attachments: Vec::new() }).await;
        let (mut a, mut st, mut d) = (None, None, None);
        loop {
            let msg = next(ws).await;
            let at = t0.elapsed().as_secs_f64() * 1000.0;
            match msg {
                ServerMsg::Control(ControlMsg::Ack { .. }) => a = a.or(Some(at)),
                ServerMsg::Event(e) => match e.body {
                    EventBody::TurnStarted { .. } => st = st.or(Some(at)),
                    EventBody::Delta { .. } => d = d.or(Some(at)),
                    ref b if b.is_terminal() => break,
                    _ => {}
                },
                _ => {}
            }
        }
        if i >= warmup {
            ack.push(a.expect("an ack"));
            started.push(st.expect("turn_started"));
            delta.push(d.expect("a delta"));
            ping.push(rtt);
            ping_inner.push(rtt_inner);
        }
    }
    let after = commandstats(&raw).await;
    println!(
        "latency at idle, {turns} turns one at a time, {per_session} per session, demo model answering at once (ms)"
    );
    for (name, v) in [("send → ack", ack), ("send → turn_started", started), ("send → first delta", delta)] {
        let q = quantiles(v);
        println!("{name:<22} p50={:>6.3}  p90={:>6.3}  p99={:>6.3}", q[0], q[1], q[2]);
    }
    for (name, v) in [("PING, client runtime", ping), ("PING, fleet task", ping_inner)] {
        let q = quantiles(v);
        println!("{name:<22} p50={:>6.3}  p90={:>6.3}  p99={:>6.3}", q[0], q[1], q[2]);
    }
    let rendered = recorder.render();
    println!("server stages, means (ms), warm-up included:");
    for (label, metric) in [
        ("gateway send → ack", chatfleet::metrics::GATEWAY_ACK_SECONDS),
        ("queue wait", chatfleet::metrics::TURN_QUEUE_WAIT_SECONDS),
        ("session load", chatfleet::metrics::TURN_SESSION_LOAD_SECONDS),
        ("model ttft", chatfleet::metrics::TURN_MODEL_TTFT_SECONDS),
        ("fleet overhead", chatfleet::metrics::TURN_FLEET_OVERHEAD_SECONDS),
        ("enqueue → first delta", chatfleet::metrics::TURN_TTFT_SECONDS),
        ("one cf3_batch call", chatfleet::metrics::REDIS_BATCH_SECONDS),
    ] {
        match mean_ms(&rendered, metric) {
            Some(ms) => println!("  {label:<22} {ms:>7.3}"),
            None => println!("  {label:<22}       -"),
        }
    }
    println!("Redis, per turn (calls, µs inside the command):");
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(name, calls, usec)| {
            let (c0, u0) = before.iter().find(|(n, _, _)| n == name).map(|(_, c, u)| (*c, *u)).unwrap_or_default();
            (name.clone(), (calls - c0) / turns as f64, (usec - u0) / turns as f64)
        })
        .filter(|(name, calls, _)| *calls > 0.0 && !name.starts_with("info") && name != "ping")
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (name, calls, usec) in rows.iter().take(12) {
        println!("  {name:<14} {calls:>5.2} calls  {usec:>7.1} µs");
    }
    fleet_rt.spawn(fleet.stop()).await?;
    Ok(())
}
